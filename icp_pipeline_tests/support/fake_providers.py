"""Local fake HTTP servers that speak the wire protocols of the three model providers.

Standard library only. Each server binds 127.0.0.1 on a free port, runs in a daemon thread and is a
context manager::

    with FakeOpenAI(api_key="sk-test") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0)
        server.script(status(429, retry_after=2), ok)
        ...
        assert server.requests[-1].json["tools"][0]["user_location"]["country"] == "DE"

Endpoints (anything else gets a provider-shaped 404, and consumes no script step):

* ``FakeOpenAI``     POST /v1/responses                                   (OpenAI Responses API)
* ``FakeAnthropic``  POST /v1/messages                                    (Anthropic Messages API)
* ``FakeGemini``     POST /v1beta/models/{model}:generateContent, and /v1/models/{model}:generateContent

Base URLs to give the SDKs: ``openai.OpenAI(base_url=f"{url}/v1")``, ``anthropic.Anthropic(base_url=url)``,
``genai.Client(http_options=types.HttpOptions(base_url=url, api_version="v1beta"))``. The same values
work through the environment: OPENAI_BASE_URL=f"{url}/v1", ANTHROPIC_BASE_URL=url,
GOOGLE_GEMINI_BASE_URL=url (the last one is read by the project's Gemini adapter, not by the SDK).

Script steps (``server.script(*steps)`` queues them; each request that reaches the endpoint with a
valid key consumes one, FIFO; an empty queue means ``ok``):

* ``ok``                   normal successful answer (a constant, not a function)
* ``status(code, retry_after=None, retry_after_ms=None, body=None, headers=None)``
                           error status with a provider-shaped error JSON body, plus ``Retry-After`` /
                           ``retry-after-ms`` headers when given. ``body`` replaces the JSON body
                           (dict/list -> JSON, str/bytes -> sent as is).
* ``hang(seconds)``        wait ``seconds`` before answering normally (to exceed a client timeout); the
                           wait ends early, without an answer, when the server stops
* ``malformed``            200, ``Content-Type: application/json``, a body that is not valid JSON
* ``no_usage``             normal answer without usage (OpenAI/Anthropic ``"usage": null``, Gemini
                           without ``usageMetadata``), so the SDK objects carry ``usage is None``
* ``text(s)``              normal answer whose output text is exactly ``s`` (structured output: JSON
                           text, or deliberately invalid JSON text)
* ``refusal``              (extra) the provider's refusal shape: OpenAI ``status="incomplete"`` with
                           ``incomplete_details.reason="content_filter"``; Anthropic
                           ``stop_reason="refusal"``; Gemini ``finishReason="SAFETY"`` without content
* ``refusal_part``         OpenAI: a completed message whose content is a ``refusal`` part; the
                           others: as ``refusal``
* ``prompt_blocked``       Gemini: no candidates, ``promptFeedback.blockReason="PROHIBITED_CONTENT"``;
                           the others: as ``refusal``
* ``empty``                no content at all: OpenAI completed with ``output=[]``; Anthropic
                           ``end_turn`` with ``content=[]``; Gemini no candidates and no feedback
* ``truncated``            cut off by the token limit with partial text (the first half of the answer),
                           output tokens = the request's limit: OpenAI ``status="incomplete"``,
                           ``incomplete_details.reason="max_output_tokens"``; Anthropic
                           ``stop_reason="max_tokens"``; Gemini ``finishReason="MAX_TOKENS"``
* ``truncated_empty``      the same with no text at all: OpenAI only a reasoning item; Anthropic no
                           content (web search: only the tool blocks); Gemini ``content`` without
                           ``parts`` and ``thoughtsTokenCount`` = the limit (thinking used the budget)
* ``pause_turn``           Anthropic: ``stop_reason="pause_turn"``, content = [narration text, (with web
                           search) server_tool_use, web_search_tool_result, "Now continuing with the
                           remaining searches."]; continue it by sending that content back as the
                           assistant message (the next request gets the next step, ``ok`` by default);
                           the others: as ``ok``

``NUL_TEXT`` and ``SURROGATE_TEXT`` are answer texts for ``text(...)`` holding ``\u0000`` and a lone
``\ud800``: valid JSON on the wire (escaped), rejected by PostgreSQL and SQLite text columns.

Every request is recorded in ``server.requests`` (``RecordedRequest``: method, path, query, headers
with lower-case keys, raw body, parsed ``json``, the step applied and the status/body answered), also
requests rejected for auth or path. ``server.request_count`` counts them; ``server.max_concurrent`` is
the peak number handled at once (``latency``/``hang`` waits count as being handled).

Per-server knobs (plain attributes, change them any time): ``latency`` (seconds before every answer),
``answer_text``, ``input_tokens``, ``output_tokens``, ``cached_tokens``, ``model_suffix`` (appended to
the requested model to form the dated model version the response reports), ``cited_sources`` and
``retrieved_sources`` (``[(url, title), ...]`` used for web-search answers).
More knobs: ``cache_write_tokens`` / ``cache_write_1h_tokens`` (Anthropic ``cache_creation`` usage,
5-minute and 1-hour; OpenAI ``input_tokens_details.cache_write_tokens``), ``tool_use_prompt_tokens``
(Gemini ``toolUsePromptTokenCount``), ``reasoning_tokens`` (OpenAI reasoning item and
``reasoning_tokens``, Gemini ``thoughtsTokenCount``), ``search_calls_without_action`` (OpenAI
``web_search_call`` items without ``action``), Anthropic ``narration`` (text before the search) and
``split_citations`` (the answer split into text blocks around its citation). ``respond_with``: a
function of the ``RecordedRequest`` returning the step for it (or None for the next scripted one), e.g.
to echo a token of the prompt (``server.prompt_of(record.json)``). ``keep_alive=True`` (constructor)
serves HTTP/1.1 with kept-alive connections, as the real APIs do; ``RecordedRequest.client_port``
tells the connections apart.

Auth: a server built with ``api_key=...`` answers 401 (provider-shaped) when the request's key differs.
Keys are read from ``Authorization: Bearer KEY`` (all three), ``x-api-key`` (Anthropic),
``x-goog-api-key`` or the ``key`` query parameter (Gemini). Rejected requests consume no script step.

Web search: OpenAI when ``tools`` has an item whose type starts with "web_search" (its
``web_search_call`` carries ``action.sources`` only when ``include`` asks for
"web_search_call.action.sources", as the real API); Anthropic the same;
Gemini when a ``tools`` item has ``googleSearch``/``google_search`` (or ``googleSearchRetrieval``).
The answer then carries citations in the provider's own format (see each class).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "PROVIDER_CASES",
    "ProviderCase",
    "DEFAULT_ANSWER",
    "FakeAnthropic",
    "FakeGemini",
    "FakeOpenAI",
    "FakeProviderServer",
    "RecordedRequest",
    "Step",
    "hang",
    "malformed",
    "no_usage",
    "ok",
    "refusal",
    "refusal_part",
    "pause_turn",
    "truncated",
    "truncated_empty",
    "prompt_blocked",
    "empty",
    "NUL_TEXT",
    "SURROGATE_TEXT",
    "status",
    "text",
]

DEFAULT_ANSWER = "Acme is a strong choice. See https://acme.io/pricing."
CITED_SOURCES: tuple[tuple[str, str], ...] = (("https://acme.io/pricing", "Acme pricing"),)
RETRIEVED_ONLY_SOURCES: tuple[tuple[str, str], ...] = (
    ("https://retrieved-only.example/page", "Retrieved only"),
)
DEFAULT_STRUCTURED = (
    '{"claims": [{"text": "Acme is a strong choice.", "company": "Acme", "sentiment": "positive", '
    '"supporting_urls": []}]}'
)


# --------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """One scripted behaviour. Build it with the constructors below rather than directly."""

    # "ok" | "status" | "hang" | "malformed" | "no_usage" | "text" | "refusal" | "refusal_part" |
    # "pause_turn" | "truncated" | "truncated_empty" | "prompt_blocked" | "empty"
    kind: str
    code: int | None = None
    retry_after: float | int | str | None = None
    retry_after_ms: float | int | str | None = None
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0
    text: str | None = None

    def __repr__(self) -> str:
        if self.kind == "status":
            return f"status({self.code})"
        if self.kind == "hang":
            return f"hang({self.seconds})"
        if self.kind == "text":
            return f"text({self.text!r})"
        return self.kind


ok = Step("ok")
malformed = Step("malformed")
no_usage = Step("no_usage")
refusal = Step("refusal")
# Recorded shapes of unfinished turns (see the module docstring for each provider's form).
pause_turn = Step("pause_turn")
truncated = Step("truncated")
truncated_empty = Step("truncated_empty")
refusal_part = Step("refusal_part")
prompt_blocked = Step("prompt_blocked")
empty = Step("empty")
# Answer texts that are valid JSON on the wire but that SQLite/PostgreSQL text columns reject.
NUL_TEXT = "Acme \u0000 is great"
SURROGATE_TEXT = "Acme \ud800 is great"


def status(
    code: int,
    retry_after: float | int | str | None = None,
    retry_after_ms: float | int | str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Step:
    """An error answer with HTTP ``code`` and a provider-shaped error body (or ``body`` verbatim)."""
    if not 400 <= code <= 599:
        raise ValueError(f"status() is for error codes, got {code}")
    return Step(
        "status",
        code=code,
        retry_after=retry_after,
        retry_after_ms=retry_after_ms,
        body=body,
        headers=tuple((headers or {}).items()),
    )


def hang(seconds: float) -> Step:
    """Wait ``seconds`` before answering normally."""
    return Step("hang", seconds=float(seconds))


def text(s: str) -> Step:
    """A normal answer whose output text is exactly ``s``."""
    return Step("text", text=s)


# ---------------------------------------------------------------------------------------- recording


@dataclass
class RecordedRequest:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case keys
    body: bytes
    json: Any  # the parsed body, or None when it was empty or not JSON
    received_at: float
    step: Step | None = None  # the script step applied (None: rejected before the script, e.g. 401/404)
    status: int | None = None  # the status answered (None while still being handled, or never answered)
    response_body: bytes | None = None
    client_port: int | None = None  # the client's end of the connection: one per kept-alive connection

    @property
    def response_json(self) -> Any:
        return json.loads(self.response_body) if self.response_body else None


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(status_code: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status_code, json.dumps(payload).encode(), dict(headers or {}))


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _span(haystack: str, needle: str) -> tuple[int, int]:
    start = haystack.find(needle)
    return (start, start + len(needle)) if start >= 0 else (0, len(haystack))


def _domain(url: str) -> str:
    return urlsplit(url).hostname or url


# ------------------------------------------------------------------------------------------- server


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeProviderServer


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads left behind

    def do_POST(self) -> None:  # noqa: N802
        self.server.fake._handle(self)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

    def log_message(self, *_args: Any) -> None:
        pass

    def setup(self) -> None:
        if self.server.fake.keep_alive:
            # HTTP/1.1 keeps the connection open between requests, as the real APIs do; this is what
            # lets a client's pooled connection be inherited across a fork. Idle connections close
            # after `timeout` seconds so their handler threads end.
            self.protocol_version = "HTTP/1.1"
            self.timeout = 30
        super().setup()

    def read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class FakeProviderServer:
    """Shared machinery: threading HTTP server, recording, script queue, latency, auth."""

    provider: ClassVar[str] = "fake"
    default_model: ClassVar[str] = "model"
    model_suffix: str = ""
    default_retrieved_sources: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(
        self,
        *,
        api_key: str | None = None,
        answer_text: str = DEFAULT_ANSWER,
        latency: float = 0.0,
        input_tokens: int = 120,
        output_tokens: int = 45,
        cached_tokens: int = 20,
        keep_alive: bool = False,
    ) -> None:
        self.api_key = api_key
        # HTTP/1.1 keep-alive connections (the real APIs' behaviour); fixed when the server starts.
        self.keep_alive = keep_alive
        # Decides the step per request when set (a step, or None to take the next scripted one), e.g.
        # to answer each request with a token of its own prompt, or to fail requests about one subject.
        self.respond_with: Callable[[RecordedRequest], Step | None] | None = None
        self.answer_text = answer_text
        # What a structured-output request (JSON schema in the body) gets unless a step says otherwise.
        self.structured_text = DEFAULT_STRUCTURED
        self.latency = latency
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cached_tokens = cached_tokens
        self.model_suffix = type(self).model_suffix
        # Prompt-cache writes (Anthropic 5-minute and 1-hour, OpenAI input_tokens_details), Gemini's
        # grounding prompt tokens and reasoning ("thinking") tokens: reported only when non-zero.
        self.cache_write_tokens = 0
        self.cache_write_1h_tokens = 0
        self.tool_use_prompt_tokens = 0
        self.reasoning_tokens = 0
        # OpenAI: web_search_call items without an `action`, put before the one that searched.
        self.search_calls_without_action = 0
        self.cited_sources: list[tuple[str, str]] = list(CITED_SOURCES)
        self.retrieved_sources: list[tuple[str, str]] = list(type(self).default_retrieved_sources)
        self.requests: list[RecordedRequest] = []
        self.max_concurrent = 0
        self._in_flight = 0
        self._steps: deque[Step] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._closing.clear()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"fake-{self.provider}-{port}",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._closing.set()  # wakes handlers sleeping in latency/hang
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    close = stop

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test API

    @staticmethod
    def wants_structured(body: dict[str, Any]) -> bool:
        return False

    def script(self, *steps: Step) -> None:
        """Queue behaviours, consumed one per (authorised, routed) request; then ``ok`` again."""
        for step in steps:
            if not isinstance(step, Step):
                raise TypeError(f"not a script step: {step!r} (use ok, status(...), hang(...), ...)")
        with self._lock:
            self._steps.extend(steps)

    @property
    def pending_steps(self) -> list[Step]:
        with self._lock:
            return list(self._steps)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self.requests:
                raise AssertionError(f"the fake {self.provider} server received no request")
            return self.requests[-1]

    @property
    def bodies(self) -> list[Any]:
        """The parsed JSON body of every recorded request, in arrival order."""
        with self._lock:
            return [r.json for r in self.requests]

    def reset(self) -> None:
        """Forget recorded requests, pending steps and the concurrency peak."""
        with self._lock:
            self.requests.clear()
            self._steps.clear()
            self.max_concurrent = self._in_flight

    # ------------------------------------------------------------------ request handling

    def _handle(self, handler: _Handler) -> None:
        split = urlsplit(handler.path)
        raw = handler.read_body()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        record = RecordedRequest(
            method=handler.command,
            path=split.path,
            query=parse_qs(split.query),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=raw,
            json=parsed,
            received_at=time.time(),
            client_port=handler.client_address[1],
        )
        with self._lock:
            self.requests.append(record)
            self._in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self._in_flight)
        try:
            if self.latency and self._closing.wait(self.latency):
                return
            reply = self._dispatch(record)
            if reply is None:  # the server stopped during a hang
                return
            record.status = reply.status
            record.response_body = reply.body
            self._send(handler, reply)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _dispatch(self, record: RecordedRequest) -> _Reply | None:
        route = self._route(record.method, record.path)
        if route is None:
            return self._error_reply(404, f"Unknown endpoint {record.method} {record.path}")
        if self.api_key is not None and self._request_key(record) != self.api_key:
            return self._error_reply(401, "Invalid API key")
        chosen = self.respond_with(record) if self.respond_with is not None else None
        with self._lock:
            step = chosen or (self._steps.popleft() if self._steps else ok)
        record.step = step
        kind = step.kind
        if kind == "status":
            assert step.code is not None
            headers = dict(step.headers)
            if step.retry_after is not None:
                headers["Retry-After"] = str(step.retry_after)
            if step.retry_after_ms is not None:
                headers["retry-after-ms"] = str(step.retry_after_ms)
            if step.body is not None:
                body = step.body
                if isinstance(body, str):
                    body = body.encode()
                if not isinstance(body, bytes):
                    body = json.dumps(body).encode()
                return _Reply(step.code, body, {"Content-Type": "application/json", **headers})
            reply = self._error_reply(step.code, self._default_message(step.code))
            reply.headers.update(headers)
            return reply
        if kind == "hang" and self._closing.wait(step.seconds):
            return None
        if kind == "malformed":
            return _Reply(200, b'{"id": "truncated", "output": [', {"Content-Type": "application/json"})
        body_json = record.json if isinstance(record.json, dict) else {}
        if kind == "text" and step.text is not None:
            answer = step.text
        elif self.wants_structured(body_json):
            answer = self.structured_text
        else:
            answer = self.answer_text
        payload = self._success(route, body_json, answer, usage=kind != "no_usage", kind=kind)
        return _json_reply(200, payload, self._success_headers())

    def _send(self, handler: _Handler, reply: _Reply) -> None:
        try:
            handler.send_response(reply.status)
            headers = {"Content-Type": "application/json", **reply.headers}
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(reply.body)))
            handler.end_headers()
            handler.wfile.write(reply.body)
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass  # the client gave up (timeout) before the answer

    def _error_reply(self, code: int, message: str) -> _Reply:
        return _json_reply(code, self._error_body(code, message), self._error_headers())

    @staticmethod
    def _default_message(code: int) -> str:
        return {
            400: "Invalid request",
            401: "Invalid API key",
            403: "Permission denied",
            404: "Not found",
            408: "Request timed out",
            429: "Rate limit exceeded, please retry later",
            500: "Internal server error",
            502: "Bad gateway",
            503: "Service unavailable",
            504: "Deadline exceeded",
            529: "Overloaded",
        }.get(code, f"Error {code}")

    def _response_model(self, model: str) -> str:
        if re.search(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{3})$", model):
            return model  # already a dated/pinned version
        return f"{model}{self.model_suffix}"

    # ------------------------------------------------------------------ provider hooks

    def _route(self, method: str, path: str) -> dict[str, str] | None:
        raise NotImplementedError

    def _request_key(self, record: RecordedRequest) -> str | None:
        auth = record.headers.get("authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _error_body(self, code: int, message: str) -> Any:
        raise NotImplementedError

    def _error_headers(self) -> dict[str, str]:
        return {}

    def _success_headers(self) -> dict[str, str]:
        return {}

    def _success(
        self, route: dict[str, str], body: dict[str, Any], answer: str, *, usage: bool, kind: str
    ) -> Any:
        """The 200 body for a step ``kind`` ("ok", "text", "refusal", "truncated", ...)."""
        raise NotImplementedError

    @staticmethod
    def _partial(answer: str) -> str:
        """The text so far of an answer cut off by the token limit."""
        return answer[: max(1, len(answer) // 2)].rstrip()

    @staticmethod
    def prompt_of(body: Any) -> str:
        """The user prompt of a request body (the first user text), "" when there is none."""
        raise NotImplementedError

    def _all_sources(self) -> list[tuple[str, str]]:
        seen = {url for url, _ in self.cited_sources}
        return list(self.cited_sources) + [s for s in self.retrieved_sources if s[0] not in seen]


# ------------------------------------------------------------------------------------------- OpenAI


class FakeOpenAI(FakeProviderServer):
    """OpenAI Responses API: POST /v1/responses.

    Answer: a ``response`` object echoing model (+ ``model_suffix``, default "-2024-07-18"), tools,
    instructions, text config; ``output`` = [message] or, with web search, [web_search_call, message]
    where the message's ``output_text`` part carries ``url_citation`` annotations for ``cited_sources``.
    Usage: ``input_tokens`` (includes ``cached_tokens`` in ``input_tokens_details``), ``output_tokens``.
    """

    provider = "openai"
    default_model = "gpt-4o-mini"
    model_suffix = "-2024-07-18"

    _ERROR_TYPES: ClassVar[dict[int, tuple[str, str | None]]] = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("invalid_request_error", "unsupported_country_region_territory"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }

    def _route(self, method: str, path: str) -> dict[str, str] | None:
        return {"endpoint": "responses"} if method == "POST" and path == "/v1/responses" else None

    def _error_body(self, code: int, message: str) -> Any:
        kind, err_code = self._ERROR_TYPES.get(
            code, ("server_error" if code >= 500 else "invalid_request_error", None)
        )
        return {"error": {"message": message, "type": kind, "param": None, "code": err_code}}

    def _error_headers(self) -> dict[str, str]:
        return {"x-request-id": _new_id("req_")}

    def _success_headers(self) -> dict[str, str]:
        return {"x-request-id": _new_id("req_"), "openai-processing-ms": "12"}

    @staticmethod
    def wants_structured(body: dict[str, Any]) -> bool:
        return ((body.get("text") or {}).get("format") or {}).get("type") == "json_schema"

    @staticmethod
    def prompt_of(body: Any) -> str:
        given = body.get("input") if isinstance(body, dict) else None
        if isinstance(given, str):
            return given
        for item in given or []:
            content = item.get("content") if isinstance(item, dict) else None
            if isinstance(content, str):
                return content
            for part in content or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    return part["text"]
        return ""

    @staticmethod
    def wants_web_search(body: dict[str, Any]) -> bool:
        return any(
            isinstance(t, dict) and str(t.get("type", "")).startswith("web_search")
            for t in body.get("tools") or []
        )

    def _success(
        self, route: dict[str, str], body: dict[str, Any], answer: str, *, usage: bool, kind: str
    ) -> Any:
        now = int(time.time())
        if kind == "prompt_blocked":
            kind = "refusal"  # the Responses API blocks a prompt with its content filter
        model = str(body.get("model") or self.default_model)
        output: list[dict[str, Any]] = []
        web = self.wants_web_search(body)
        # Only a request that asks for them gets the searched sources (as the real API does).
        with_sources = "web_search_call.action.sources" in (body.get("include") or [])
        incomplete_reason = {
            "refusal": "content_filter",
            "truncated": "max_output_tokens",
            "truncated_empty": "max_output_tokens",
        }.get(kind)
        if kind in ("truncated", "truncated_empty"):
            answer = self._partial(answer) if kind == "truncated" else ""
        annotations: list[dict[str, Any]] = []
        if self.reasoning_tokens or kind == "truncated_empty":
            output.append({"type": "reasoning", "id": _new_id("rs_"), "summary": []})
        if web:
            query = str(body.get("input") if isinstance(body.get("input"), str) else "acme")[:80]
            for _ in range(self.search_calls_without_action):
                output.append({"type": "web_search_call", "id": _new_id("ws_"), "status": "completed"})
            action: dict[str, Any] = {"type": "search", "query": query, "queries": [query]}
            if with_sources:
                action["sources"] = [{"type": "url", "url": url} for url, _ in self._all_sources()]
            output.append(
                {"type": "web_search_call", "id": _new_id("ws_"), "status": "completed", "action": action}
            )
            for url, title in self.cited_sources:
                if url not in answer and kind in ("truncated", "truncated_empty"):
                    continue
                start, end = _span(answer, url)
                annotations.append(
                    {
                        "type": "url_citation",
                        "url": url,
                        "title": title,
                        "start_index": start,
                        "end_index": end,
                    }
                )
        part: dict[str, Any] | None = None
        if kind == "refusal_part":
            part = {"type": "refusal", "refusal": "I'm sorry, I can't help with that."}
        elif kind not in ("refusal", "truncated_empty", "empty"):
            part = {"type": "output_text", "text": answer, "annotations": annotations, "logprobs": []}
        if part is not None:
            output.append(
                {
                    "type": "message",
                    "id": _new_id("msg_"),
                    "role": "assistant",
                    "status": "incomplete" if incomplete_reason else "completed",
                    "content": [part],
                }
            )
        output_tokens = self.output_tokens + self.reasoning_tokens
        if incomplete_reason == "max_output_tokens" and body.get("max_output_tokens"):
            output_tokens = int(body["max_output_tokens"])
        return {
            "id": _new_id("resp_"),
            "object": "response",
            "created_at": now,
            "completed_at": None if incomplete_reason else now,
            "status": "incomplete" if incomplete_reason else "completed",
            "background": False,
            "error": None,
            "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": self._response_model(model),
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": body.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": {
                "input_tokens": self.input_tokens,
                "input_tokens_details": {
                    "cached_tokens": self.cached_tokens,
                    "cache_write_tokens": self.cache_write_tokens,
                },
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
                "total_tokens": self.input_tokens + output_tokens,
            }
            if usage
            else None,
            "user": None,
            "metadata": {},
        }


# ---------------------------------------------------------------------------------------- Anthropic


class FakeAnthropic(FakeProviderServer):
    """Anthropic Messages API: POST /v1/messages.

    Answer: a ``message`` with model (+ ``model_suffix``, default "-20251001"); with web search the
    content is [server_tool_use, web_search_tool_result (``cited_sources`` + ``retrieved_sources``,
    default one retrieved-only page), text with ``web_search_result_location`` citations for
    ``cited_sources``]. Usage: ``input_tokens`` excludes the cache (``cache_read_input_tokens`` =
    ``cached_tokens``, ``cache_creation_input_tokens`` = 0).
    """

    provider = "anthropic"
    default_model = "claude-haiku-4-5"
    model_suffix = "-20251001"
    default_retrieved_sources = RETRIEVED_ONLY_SOURCES
    # Text written before the search (web-search answers only), as real answers often have.
    narration: str | None = None
    # Split the answer into text blocks around the first cited URL, as the API does for citations.
    split_citations: bool = False

    _ERROR_TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        402: "billing_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        504: "timeout_error",
        529: "overloaded_error",
    }

    def _route(self, method: str, path: str) -> dict[str, str] | None:
        return {"endpoint": "messages"} if method == "POST" and path == "/v1/messages" else None

    def _request_key(self, record: RecordedRequest) -> str | None:
        return record.headers.get("x-api-key") or super()._request_key(record)

    def _error_body(self, code: int, message: str) -> Any:
        kind = self._ERROR_TYPES.get(code, "api_error" if code >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}, "request_id": _new_id("req_")}

    def _error_headers(self) -> dict[str, str]:
        return {"request-id": _new_id("req_")}

    _success_headers = _error_headers

    @staticmethod
    def wants_structured(body: dict[str, Any]) -> bool:
        return bool((body.get("output_config") or {}).get("format"))

    @staticmethod
    def prompt_of(body: Any) -> str:
        for message in (body.get("messages") if isinstance(body, dict) else None) or []:
            if not isinstance(message, dict) or message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                return content
            for block in content or []:
                if isinstance(block, dict) and isinstance(block.get("text"), str):
                    return block["text"]
        return ""

    @staticmethod
    def wants_web_search(body: dict[str, Any]) -> bool:
        return any(
            isinstance(t, dict) and str(t.get("type", "")).startswith("web_search")
            for t in body.get("tools") or []
        )

    # Recorded wording of a paused web-search turn's narration.
    PAUSE_NARRATION: ClassVar[tuple[str, str]] = (
        "I'll search for current information about this.",
        "Now continuing with the remaining searches.",
    )

    def _search_blocks(self, query: str) -> list[dict[str, Any]]:
        tool_id = _new_id("srvtoolu_")
        return [
            {"type": "server_tool_use", "id": tool_id, "name": "web_search", "input": {"query": query}},
            {
                "type": "web_search_tool_result",
                "tool_use_id": tool_id,
                "content": [
                    {
                        "type": "web_search_result",
                        "url": url,
                        "title": title,
                        "encrypted_content": f"enc-{index}",
                        "page_age": None,
                    }
                    for index, (url, title) in enumerate(self._all_sources())
                ],
            },
        ]

    def _answer_blocks(self, answer: str) -> list[dict[str, Any]]:
        """The answer as the API writes it after a search: text split around each cited passage."""
        cited = [(url, title) for url, title in self.cited_sources if url in answer]
        if not cited or not self.split_citations:
            citations = [
                {
                    "type": "web_search_result_location",
                    "url": url,
                    "title": title,
                    "encrypted_index": f"idx-{index}",
                    "cited_text": answer[:150],
                }
                for index, (url, title) in enumerate(self.cited_sources)
            ]
            return [{"type": "text", "text": answer, "citations": citations}]
        url, title = cited[0]
        before, _, after = answer.partition(url)
        citation = {
            "type": "web_search_result_location",
            "url": url,
            "title": title,
            "encrypted_index": "idx-0",
            "cited_text": url,
        }
        blocks = [{"type": "text", "text": before, "citations": None}] if before else []
        blocks.append({"type": "text", "text": url, "citations": [citation]})
        if after:
            blocks.append({"type": "text", "text": after, "citations": None})
        return blocks

    def _success(
        self, route: dict[str, str], body: dict[str, Any], answer: str, *, usage: bool, kind: str
    ) -> Any:
        model = str(body.get("model") or self.default_model)
        refused = kind in ("refusal", "refusal_part", "prompt_blocked")
        web = self.wants_web_search(body) and not refused
        stop_reason = {
            "pause_turn": "pause_turn",
            "truncated": "max_tokens",
            "truncated_empty": "max_tokens",
        }.get(kind, "refusal" if refused else "end_turn")
        content: list[dict[str, Any]] = []
        if kind == "pause_turn":
            first, then = self.PAUSE_NARRATION
            content.append({"type": "text", "text": first, "citations": None})
            if web:
                content.extend(self._search_blocks("acme pricing"))
            content.append({"type": "text", "text": then, "citations": None})
        elif web:
            if self.narration:
                content.append({"type": "text", "text": self.narration, "citations": None})
            content.extend(self._search_blocks("acme pricing"))
            if kind == "truncated":
                content.append({"type": "text", "text": self._partial(answer), "citations": None})
            elif kind not in ("truncated_empty", "empty"):
                content.extend(self._answer_blocks(answer))
        elif kind == "truncated":
            content.append({"type": "text", "text": self._partial(answer), "citations": None})
        elif not refused and kind not in ("truncated_empty", "empty"):
            content.append({"type": "text", "text": answer, "citations": None})
        usage_body: dict[str, Any] | None = None
        if usage:
            output_tokens = self.output_tokens
            if stop_reason == "max_tokens" and body.get("max_tokens"):
                output_tokens = int(body["max_tokens"])
            usage_body = {
                "input_tokens": self.input_tokens,
                "output_tokens": output_tokens,
                "cache_read_input_tokens": self.cached_tokens,
                "cache_creation_input_tokens": self.cache_write_tokens + self.cache_write_1h_tokens,
                "service_tier": "standard",
            }
            if self.cache_write_tokens or self.cache_write_1h_tokens:
                usage_body["cache_creation"] = {
                    "ephemeral_5m_input_tokens": self.cache_write_tokens,
                    "ephemeral_1h_input_tokens": self.cache_write_1h_tokens,
                }
            if web:
                usage_body["server_tool_use"] = {"web_search_requests": 1, "web_fetch_requests": 0}
        return {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self._response_model(model),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "stop_details": {"type": "refusal", "category": None, "explanation": None} if refused else None,
            "usage": usage_body,
        }


# ------------------------------------------------------------------------------------------- Gemini


class FakeGemini(FakeProviderServer):
    """Gemini API: POST /v1beta/models/{model}:generateContent (and /v1/...).

    Answer: one candidate (finishReason STOP), ``modelVersion`` = model + ``model_suffix`` (default
    "-001"). With Google Search grounding, ``groundingMetadata`` has one ``groundingChunks`` entry per
    source (``cited_sources`` then ``retrieved_sources``; by default just the cited one), each a
    vertexaisearch redirect URI titled with the domain, and ``groundingSupports`` pointing at the cited
    chunks only. Usage: ``promptTokenCount`` = ``input_tokens``, ``cachedContentTokenCount`` =
    ``cached_tokens``.
    """

    provider = "gemini"
    default_model = "gemini-2.5-flash"
    model_suffix = "-001"

    _STATUSES: ClassVar[dict[int, str]] = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        409: "ABORTED",
        429: "RESOURCE_EXHAUSTED",
        499: "CANCELLED",
        500: "INTERNAL",
        501: "NOT_IMPLEMENTED",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }
    _PATH = re.compile(r"^/(?P<version>v1beta|v1)/models/(?P<model>[^/:]+):generateContent$")

    def _route(self, method: str, path: str) -> dict[str, str] | None:
        match = self._PATH.match(path)
        return match.groupdict() if method == "POST" and match else None

    def _request_key(self, record: RecordedRequest) -> str | None:
        return (
            record.headers.get("x-goog-api-key")
            or (record.query.get("key") or [None])[0]
            or super()._request_key(record)
        )

    def _error_body(self, code: int, message: str) -> Any:
        return {"error": {"code": code, "message": message, "status": self._STATUSES.get(code, "UNKNOWN")}}

    @staticmethod
    def wants_structured(body: dict[str, Any]) -> bool:
        return (body.get("generationConfig") or {}).get("responseMimeType") == "application/json"

    @staticmethod
    def wants_web_search(body: dict[str, Any]) -> bool:
        keys = {"googleSearch", "google_search", "googleSearchRetrieval", "google_search_retrieval"}
        return any(isinstance(t, dict) and keys & set(t) for t in body.get("tools") or [])

    @staticmethod
    def prompt_of(body: Any) -> str:
        for content in (body.get("contents") if isinstance(body, dict) else None) or []:
            for part in (content or {}).get("parts") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    return part["text"]
        return ""

    @classmethod
    def _prompt(cls, body: dict[str, Any]) -> str:
        return cls.prompt_of(body) or "acme"

    def _success(
        self, route: dict[str, str], body: dict[str, Any], answer: str, *, usage: bool, kind: str
    ) -> Any:
        model = route.get("model") or self.default_model
        candidate: dict[str, Any] | None
        output_tokens: int | None = self.output_tokens
        if kind in ("refusal", "refusal_part"):
            candidate = {
                "finishReason": "SAFETY",
                "index": 0,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
                ],
            }
            output_tokens = None
        elif kind in ("prompt_blocked", "empty"):
            candidate = None
            output_tokens = None
        elif kind == "truncated_empty":
            # Thinking used the whole budget: no parts at all.
            candidate = {"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}
            output_tokens = None
        else:
            if kind == "truncated":
                answer = self._partial(answer)
            candidate = {
                "content": {"role": "model", "parts": [{"text": answer}]},
                "finishReason": "MAX_TOKENS" if kind == "truncated" else "STOP",
                "index": 0,
            }
            if self.wants_web_search(body):
                sources = self._all_sources()
                end = len(answer.encode())
                candidate["groundingMetadata"] = {
                    "webSearchQueries": [self._prompt(body)[:80]],
                    "searchEntryPoint": {"renderedContent": "<div>search</div>"},
                    "groundingChunks": [
                        {
                            "web": {
                                "uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/"
                                f"{uuid.uuid5(uuid.NAMESPACE_URL, url).hex}",
                                "title": _domain(url),
                            }
                        }
                        for url, _ in sources
                    ],
                    "groundingSupports": [
                        {
                            "segment": {"startIndex": 0, "endIndex": end, "text": answer},
                            "groundingChunkIndices": list(range(len(self.cited_sources))),
                        }
                    ]
                    if self.cited_sources
                    else [],
                }
        payload: dict[str, Any] = {"modelVersion": self._response_model(model)}
        if candidate is not None:
            payload["candidates"] = [candidate]
        if kind == "prompt_blocked":
            payload["promptFeedback"] = {"blockReason": "PROHIBITED_CONTENT"}
        payload["responseId"] = uuid.uuid4().hex[:22]
        if usage:
            thoughts = self.reasoning_tokens
            if kind == "truncated_empty":
                thoughts = int((body.get("generationConfig") or {}).get("maxOutputTokens") or thoughts)
            metadata: dict[str, Any] = {"promptTokenCount": self.input_tokens}
            if output_tokens is not None:
                metadata["candidatesTokenCount"] = output_tokens
            metadata["cachedContentTokenCount"] = self.cached_tokens
            if self.tool_use_prompt_tokens:
                metadata["toolUsePromptTokenCount"] = self.tool_use_prompt_tokens
            if thoughts:
                metadata["thoughtsTokenCount"] = thoughts
            metadata["totalTokenCount"] = (
                self.input_tokens + (output_tokens or 0) + self.tool_use_prompt_tokens + thoughts
            )
            metadata["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.input_tokens}]
            payload["usageMetadata"] = metadata
        return payload


# ------------------------------------------------------------------------------- test parametrisation


@dataclass(frozen=True)
class ProviderCase:
    """One provider as the tests drive it: its fake server and the variable that points the SDK at it."""

    provider: str
    model: str
    server: type[FakeProviderServer]
    base_url_variable: str
    base_url_suffix: str = ""


PROVIDER_CASES = [
    ProviderCase("openai", "gpt-4o-mini", FakeOpenAI, "OPENAI_BASE_URL", "/v1"),
    ProviderCase("anthropic", "claude-haiku-4-5", FakeAnthropic, "ANTHROPIC_BASE_URL"),
    ProviderCase("gemini", "gemini-2.5-flash", FakeGemini, "GOOGLE_GEMINI_BASE_URL"),
]
