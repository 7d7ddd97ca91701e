"""A local webhook receiver on 127.0.0.1 that records every request and can fail on purpose."""

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    fail_first: int = 0  # answer 503 to this many requests before accepting
    path: str = "/hook"
    # > 0: answer 200 with a body of `trickle_bytes` sent one byte per `trickle_seconds` (each read
    # succeeds, the answer takes long to end), stopping early when the client hangs up or the server stops.
    trickle_seconds: float = 0.0
    trickle_bytes: int = 40
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(Received(dict(self.headers.items()), body))
                status = 503 if len(receiver.requests) <= receiver.fail_first else 200
                self.send_response(status)
                if receiver.trickle_seconds > 0 and status == 200:
                    self.send_header("Content-Length", str(receiver.trickle_bytes))
                    self.end_headers()
                    self.trickle()
                    return
                self.end_headers()

            def trickle(self) -> None:
                for _ in range(receiver.trickle_bytes):
                    if receiver.stopped.wait(receiver.trickle_seconds):
                        return
                    try:
                        self.wfile.write(b".")
                        self.wfile.flush()
                    except OSError:  # the client gave up and closed the connection
                        return

            def log_message(self, *_args: Any) -> None:
                pass

        self.stopped = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
