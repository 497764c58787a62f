"""The one client that talks to fal: builds upstream URLs, injects the key, maps failures, retries reads.

It is aiohttp's client, used directly. httpx (also on aiohttp's transport) cost about 3x the CPU per call
in bench/client_stack.py, more than the whole budget of a status poll at the throughput bench/ asks for;
httpx stays the client for everything else (JWKS, fal's webhook keys, the emulator, the tests).
Callers never see an aiohttp type: answers are `UpstreamResponse`, failures are `GatewayError`s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from app.errors import UpstreamTimeout, UpstreamUnavailable
from app.metrics import Metrics
from app.operations import READ_KINDS, Operation, OpKind
from app.settings import Settings

log = logging.getLogger("falgate.upstream")

# The request headers fal documents; nothing else a caller sends is passed on.
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        "x-fal-queue-priority",
        "x-fal-runner-hint",
        "x-fal-request-timeout",
        "x-fal-no-retry",
        "x-fal-store-io",
        "x-fal-object-lifecycle-preference",
    }
)


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    method: str
    url: str
    params: Mapping[str, str]
    timeout: aiohttp.ClientTimeout


class UpstreamResponse:
    """fal's answer: status, headers (case-insensitive) and the body, read whole unless streamed."""

    __slots__ = ("status_code", "headers", "content", "_stream", "_op")

    def __init__(
        self,
        status_code: int,
        headers: CIMultiDictProxy[str],
        content: bytes = b"",
        stream: aiohttp.ClientResponse | None = None,
        op: Operation | None = None,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self._stream = stream
        self._op = op

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """A streamed body's chunks as they arrive; an idle or broken stream raises a GatewayError."""
        if self._stream is None:
            yield self.content
            return
        try:
            async for chunk in self._stream.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, self._op) from None

    async def aclose(self) -> None:
        if self._stream is not None:
            # close, not release: a stream left mid-body must not go back to the pool.
            self._stream.close()


class UpstreamClient:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        # The child of each label set, once: prometheus_client's labels() locks and validates per call.
        self._latency = {kind: metrics.upstream_latency.labels(operation=kind.value) for kind in OpKind} if metrics else {}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.upstream_max_connections, limit_per_host=0),
            cookie_jar=aiohttp.DummyCookieJar(),  # fal's cookies are none of our business, nor the caller's
            auto_decompress=False,  # bodies are relayed as fal sent them (we ask for identity anyway)
            trust_env=False,
        )
        self._auth = f"Key {settings.upstream_key}"
        connect = settings.upstream_connect_timeout
        # `connect` also bounds the wait for a free pooled connection; `sock_read` is the idle read timeout.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.upstream_timeout + connect, sock_connect=connect, sock_read=settings.upstream_timeout
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.upstream_timeout + connect, sock_connect=connect, sock_read=settings.stream_idle_timeout
        )
        self._run_timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.upstream_timeout + connect, sock_connect=connect, sock_read=settings.run_timeout
        )

    async def aclose(self) -> None:
        await self._session.close()

    def plan(self, op: Operation) -> UpstreamCall:
        s = self._settings
        if op.kind in (OpKind.SUBMIT, OpKind.RUN):
            base = s.fal_queue_url if op.kind is OpKind.SUBMIT else s.fal_run_url
            timeout = self._timeout if op.kind is OpKind.SUBMIT else self._run_timeout
            return UpstreamCall("POST", f"{base}/{op.model_id}", op.params, timeout)
        if op.kind is OpKind.UPLOAD_INITIATE:
            return UpstreamCall("POST", f"{s.fal_rest_url}/storage/upload/initiate", op.params, self._timeout)
        if op.kind is OpKind.TOKEN:
            return UpstreamCall("POST", f"{s.fal_rest_url}/tokens/", {}, self._timeout)
        base = f"{s.fal_queue_url}/{op.app_id}/requests/{op.request_id}"
        method, url, timeout = {
            OpKind.STATUS: ("GET", f"{base}/status", self._timeout),
            OpKind.STREAM: ("GET", f"{base}/status/stream", self._stream_timeout),
            OpKind.RESULT: ("GET", base, self._timeout),
            OpKind.CANCEL: ("PUT", f"{base}/cancel", self._timeout),
        }[op.kind]
        return UpstreamCall(method, url, op.params, timeout)

    def headers(self, caller_headers: Mapping[str, str], has_body: bool) -> dict[str, str]:
        out = {k: v for k, v in caller_headers.items() if k.lower() in FORWARDED_REQUEST_HEADERS}
        out["authorization"] = self._auth
        out["accept-encoding"] = "identity"  # bodies are relayed and sometimes rewritten: keep them plain
        out["user-agent"] = "falgate"
        if has_body:
            out["content-type"] = "application/json"
        return out

    async def send(
        self, op: Operation, caller_headers: Mapping[str, str], body: bytes | None = None, *, stream: bool = False
    ) -> UpstreamResponse:
        """Send the operation upstream. With stream=True the caller must `aclose()` the response."""
        call = self.plan(op)
        url = _url(call)
        headers = self.headers(caller_headers, body is not None)
        attempts = 1 + self._settings.read_retries
        for attempt in range(attempts):
            started = time.perf_counter()
            try:
                response = await self._send_once(call, url, headers, body, op, stream)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if self._metrics is not None:
                    kind = "timeout" if isinstance(exc, TimeoutError) else "connection"
                    self._metrics.upstream_errors.labels(operation=op.kind.value, kind=kind).inc()
                if attempt + 1 >= attempts or not _may_retry(op, exc):
                    raise _mapped(exc, op) from None
                await asyncio.sleep(_backoff(attempt))
            else:
                if self._metrics is not None:
                    self._latency[op.kind].observe(time.perf_counter() - started)
                    if response.status_code >= 500:
                        self._metrics.upstream_errors.labels(operation=op.kind.value, kind="status_5xx").inc()
                return response
        raise AssertionError("unreachable")

    async def _send_once(
        self, call: UpstreamCall, url: URL, headers: dict[str, str], body: bytes | None, op: Operation, stream: bool
    ) -> UpstreamResponse:
        response = await self._session.request(
            call.method, url, headers=headers, data=body, allow_redirects=False, timeout=call.timeout
        )
        if stream:
            return UpstreamResponse(response.status, response.headers, stream=response, op=op)
        try:
            content = await response.read()
        finally:
            response.release()
        return UpstreamResponse(response.status, response.headers, content)

    async def put_signed(self, url: str, content_type: str, body: AsyncIterable[bytes], size: int) -> UpstreamResponse:
        """PUT a file to a signed storage URL fal handed out, streaming `body` (exactly `size` bytes).

        No fal key: the signature in the URL is the authorization, and the key must never reach a storage
        host. No retries: the URL may be single-use and `body` can only be read once.
        """
        # The read timeout bounds the wait for the answer, not the sending of the body: cap the whole PUT
        # too, generously, so a storage host that stops reading cannot hold the request forever.
        total_seconds = max(self._settings.upstream_timeout, 300.0)
        headers = {
            "content-type": content_type,
            # A declared length (not chunked encoding): signed-URL stores commonly refuse chunked PUTs.
            "content-length": str(size),
            "accept-encoding": "identity",
            "user-agent": "falgate",
        }
        try:
            async with asyncio.timeout(total_seconds):
                # encoded=True: the signature must reach the store exactly as fal wrote it, never re-quoted.
                async with self._session.put(
                    URL(url, encoded=True), data=body, headers=headers, allow_redirects=False, timeout=self._timeout
                ) as response:
                    return UpstreamResponse(response.status, response.headers, await response.read())
        except TimeoutError:
            log.warning("upstream signed upload took longer than %ss", total_seconds)
            raise UpstreamTimeout("fal storage did not take the file in time", error_type="upstream_timeout") from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise _mapped(exc, None) from None


def _url(call: UpstreamCall) -> URL:
    # The path is built from catalog ids and a checked request id; only the query needs quoting, once.
    raw = f"{call.url}?{_query(tuple(call.params.items()))}" if call.params else call.url
    return URL(raw, encoded=True)


@functools.lru_cache(maxsize=256)
def _query(params: tuple[tuple[str, str], ...]) -> str:
    # Nearly always one of a few: logs=1, our own fal_webhook URL, a storage type.
    return urlencode(params)


def _backoff(attempt: int) -> float:
    return min(2.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2)


def _may_retry(op: Operation, exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return False
    if op.kind in READ_KINDS:
        return True
    # Anything that spends or changes state is re-sent only if the connection never opened:
    # then its bytes cannot have reached fal.
    return isinstance(exc, aiohttp.ClientConnectorError)


def _mapped(exc: BaseException, op: Operation | None) -> UpstreamTimeout | UpstreamUnavailable:
    what = f"{op.kind.value} " if op else ""
    # The exception text can contain the upstream URL; only its class goes to the log.
    log.warning("upstream %sfailed: %s", what, type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("fal did not answer in time", error_type="upstream_timeout")
    return UpstreamUnavailable("Could not reach fal", error_type="upstream_unavailable")
