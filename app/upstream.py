"""The one client that talks to fal: builds upstream URLs, injects the key, maps failures, retries reads.

It runs httpx over aiohttp's connection pool (httpx-aiohttp): the same httpx API, several times the
throughput of httpx's default transport under concurrency (bench/README.md has the figures).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

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
    timeout: httpx.Timeout


class UpstreamClient:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        limits = httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_connections,
        )
        self._transport = AiohttpTransport(limits=limits)
        self._client = httpx.AsyncClient(transport=self._transport)
        self._auth = f"Key {settings.upstream_key}"
        self._timeout = httpx.Timeout(settings.upstream_timeout, connect=settings.upstream_connect_timeout)
        self._stream_timeout = httpx.Timeout(settings.stream_idle_timeout, connect=settings.upstream_connect_timeout)
        self._run_timeout = httpx.Timeout(settings.run_timeout, connect=settings.upstream_connect_timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

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
    ) -> httpx.Response:
        """Send the operation upstream. With stream=True the caller must close the response."""
        call = self.plan(op)
        # Built and sent at the transport level: the client layer would merge base URLs, cookies and
        # redirects we never use, which the benchmark's profile showed costing more than the transport.
        request = httpx.Request(
            call.method,
            call.url,
            params=call.params or None,
            headers=self.headers(caller_headers, body is not None),
            content=body,
            extensions={"timeout": call.timeout.as_dict()},
        )
        attempts = 1 + self._settings.read_retries
        for attempt in range(attempts):
            started = time.perf_counter()
            try:
                response = await self._transport.handle_async_request(request)
                response.request = request
                if not stream:
                    await response.aread()
            except httpx.HTTPError as exc:
                if self._metrics is not None:
                    kind = "timeout" if _is_timeout(exc) else "connection"
                    self._metrics.upstream_errors.labels(operation=op.kind.value, kind=kind).inc()
                if attempt + 1 >= attempts or not _may_retry(op, exc):
                    raise _mapped(exc, op) from None
                await asyncio.sleep(_backoff(attempt))
            else:
                if self._metrics is not None:
                    self._metrics.upstream_latency.labels(operation=op.kind.value).observe(time.perf_counter() - started)
                    if response.status_code >= 500:
                        self._metrics.upstream_errors.labels(operation=op.kind.value, kind="status_5xx").inc()
                return response
        raise AssertionError("unreachable")

    async def put_signed(self, url: str, content_type: str, body: AsyncIterable[bytes], size: int) -> httpx.Response:
        """PUT a file to a signed storage URL fal handed out, streaming `body` (exactly `size` bytes).

        No fal key: the signature in the URL is the authorization, and the key must never reach a storage
        host. No retries: the URL may be single-use and `body` can only be read once.
        """
        # aiohttp bounds the wait for the answer (read) but not the sending of the body: cap the whole
        # PUT too, generously, so a storage host that stops reading cannot hold the request forever.
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
                return await self._client.put(url, content=body, headers=headers, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise _mapped(exc, None) from None
        except TimeoutError:
            log.warning("upstream signed upload took longer than %ss", total_seconds)
            raise UpstreamTimeout("fal storage did not take the file in time", error_type="upstream_timeout") from None


def _backoff(attempt: int) -> float:
    return min(2.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_timeout(exc: httpx.HTTPError) -> bool:
    # httpx-aiohttp maps aiohttp's generic ClientConnectionError to ConnectTimeout, so look at the cause.
    chain = _causes(exc)
    if any(isinstance(c, aiohttp.ClientError) for c in chain):
        return any(isinstance(c, TimeoutError) for c in chain)
    return isinstance(exc, httpx.TimeoutException)


def _never_connected(exc: httpx.HTTPError) -> bool:
    chain = _causes(exc)
    if any(isinstance(c, aiohttp.ClientError) for c in chain):
        return any(isinstance(c, aiohttp.ClientConnectorError) for c in chain) and not _is_timeout(exc)
    return isinstance(exc, httpx.ConnectError)


def _may_retry(op: Operation, exc: httpx.HTTPError) -> bool:
    if op.kind in READ_KINDS:
        return isinstance(exc, httpx.TransportError) and not _is_timeout(exc)
    # Anything that spends or changes state is re-sent only if the connection never opened:
    # then its bytes cannot have reached fal.
    return _never_connected(exc)


def _mapped(exc: httpx.HTTPError, op: Operation | None) -> UpstreamTimeout | UpstreamUnavailable:
    what = f"{op.kind.value} " if op else ""
    # The exception text can contain the upstream URL; only its class goes to the log.
    log.warning("upstream %sfailed: %s", what, type(exc).__name__)
    if _is_timeout(exc):
        return UpstreamTimeout("fal did not answer in time", error_type="upstream_timeout")
    return UpstreamUnavailable("Could not reach fal", error_type="upstream_unavailable")
