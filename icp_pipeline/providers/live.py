"""The shared shape of a live adapter: pacing, timing, error classification and key redaction.

Each provider module supplies only what differs: how to build the call, how to read the response,
and which SDK exceptions mean what.
"""

import time
from abc import ABC, abstractmethod
from typing import Any

from icp_pipeline.providers.base import ModelRequest, ModelResponse, ProviderError
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
                raise
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

    def _describe(self, error: Exception, status: int | None) -> str:
        text = redact(str(error), [self.api_key])[:500]
        if status == 401:
            return f"HTTP 401: the API key was rejected; check {self.key_variable}"
        if status is None:
            return f"{type(error).__name__}: {text}"
        return f"HTTP {status}: {text}"


def is_retryable_status(status: int | None) -> bool:
    return status is not None and status in RETRYABLE_STATUS
