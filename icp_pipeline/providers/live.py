"""The shared shape of a live adapter: pacing, timing, error classification and key redaction.

Each provider module supplies only what differs: how to build the call, how to read the response,
and which SDK exceptions mean what.

Fork safety: SDK clients keep HTTP connections alive. A client created in a process and used in a
child forked from it shares those sockets with the parent and the other children, and responses
then reach whichever process reads first. So clients live in a `ClientCache`, which hands each
process its own, and a forked child also starts with fresh pacing state.
"""

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from icp_pipeline.providers.base import FINISH_EMPTY, ModelRequest, ModelResponse, ProviderError
from icp_pipeline.providers.resilience import PACER, RETRYABLE_STATUS, redact, retry_after_seconds


class LiveAdapter(ABC):
    name: str
    key_variable: str

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    @abstractmethod
    def _call(self, request: ModelRequest) -> ModelResponse:
        """Make the SDK call and parse it; may raise the SDK's own exceptions."""

    @abstractmethod
    def _classify(self, error: Exception) -> tuple[int | None, bool | None, Any]:
        """(status code, retryable or None when unknown, response headers) of an SDK exception."""

    def complete(self, request: ModelRequest) -> ModelResponse:
        PACER.wait(self.name)
        started = time.monotonic()
        try:
            response = self._call(request)
        except ProviderError:
            raise
        except ValueError as error:  # the SDKs let a body that is not JSON through as a decode error
            raise ProviderError(
                self.name, request.model, f"malformed response: {type(error).__name__}", retryable=True
            ) from None
        except Exception as error:  # SDK errors are translated below, never leaked with secrets
            status, retryable, headers = self._classify(error)
            if retryable is None:
                # Not an error the SDK documents: fail the step without a retry, and never with the
                # exception's own text unredacted (an SDK's internals may hold the key).
                retryable = False
            retry_after = retry_after_seconds(headers)
            if status == 429:
                PACER.rate_limited(self.name, retry_after)
            message = self._describe(error, status)
            raise ProviderError(
                self.name,
                request.model,
                message,
                retryable=retryable,
                status_code=status,
                retry_after=retry_after,
            ) from None
        PACER.succeeded(self.name)
        response.latency_ms = int((time.monotonic() - started) * 1000)
        return response

    def _malformed(self, request: ModelRequest, body: bytes | None) -> ProviderError:
        """An HTTP 200 whose body does not parse. It was answered (and may be billed), so the error
        carries a response with the exact bytes for the ledger; the usage is unknown."""
        response = ModelResponse(
            text="",
            raw={},
            provider=self.name,
            requested_model=request.model,
            response_model=None,
            input_tokens=None,
            output_tokens=None,
            web_search=request.web_search,
            finish=FINISH_EMPTY,
            finish_reason="malformed",
            raw_body=body,
        )
        return ProviderError(
            self.name,
            request.model,
            "malformed response: the HTTP 200 body is not the expected JSON",
            retryable=True,
            response=response,
        )

    def _describe(self, error: Exception, status: int | None) -> str:
        text = redact(str(error), [self.api_key])[:500]
        if status == 401:
            return f"HTTP 401: the API key was rejected; check {self.key_variable}"
        if status is None:
            return f"{type(error).__name__}: {text}"
        return f"HTTP {status}: {text}"


class ClientCache:
    """SDK clients by their arguments (key, base URL), one set per process, never shared by a fork."""

    def __init__(self, build: Callable[..., Any]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._clients: dict[tuple[Any, ...], Any] = {}
        _CACHES.append(self)

    def get(self, *args: Any) -> Any:
        with self._lock:
            if self._pid != os.getpid():  # forked without the at-fork hook (e.g. os.fork in C code)
                self._forget()
            client = self._clients.get(args)
            if client is None:
                client = self._clients[args] = self._build(*args)
            return client

    def _forget(self) -> None:
        # The parent's clients are kept referenced but never used or closed here: closing them could
        # act on connections the parent still uses.
        _INHERITED.append(self._clients)
        self._clients = {}
        self._pid = os.getpid()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._forget()


_CACHES: list[ClientCache] = []
_INHERITED: list[dict[tuple[Any, ...], Any]] = []


def _after_fork_in_child() -> None:
    for cache in _CACHES:
        cache._after_fork_in_child()
    # Pacing state is re-initialised by its own at-fork hook (resilience.py).


os.register_at_fork(after_in_child=_after_fork_in_child)


def is_retryable_status(status: int | None) -> bool:
    return status is not None and status in RETRYABLE_STATUS
