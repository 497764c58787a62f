"""What one push attempt came to, whichever service it went to."""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass, replace

import httpx


@dataclass(frozen=True, slots=True)
class PushResult:
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int = 0
    retry_after: float | None = None  # seconds the service asked us to wait (Retry-After)
    dead: bool = False  # the service says the token will never work again: remove the device
    permanent: bool = False  # retrying cannot help (a 4xx other than 429): give up now


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, 86400.0)) if math.isfinite(seconds) else None


def from_status(response: httpx.Response, *, dead: bool, reason: str | None = None) -> PushResult:
    """The common reading of a push service's answer; `dead` is the service-specific verdict."""
    status = response.status_code
    if 200 <= status < 300:
        return PushResult(True, status, None)
    error = f"http_status: {status}" + (f" {reason}" if reason else "")
    if dead:
        return PushResult(False, status, "token_dead: " + error, dead=True, permanent=True)
    retryable = status == 429 or status >= 500
    return PushResult(False, status, error, retry_after=retry_after(response), permanent=not retryable)


def transport_failure(exc: BaseException) -> PushResult:
    """A connection or timeout failure: retried. Only the type is kept (a message may quote a token)."""
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return PushResult(False, None, "timeout")
    return PushResult(False, None, f"connection_failed: {type(exc).__name__}")


def timed(result: PushResult, started: float) -> PushResult:
    return replace(result, duration_ms=int((time.monotonic() - started) * 1000))
