"""The one client that talks to fal: builds upstream URLs, injects the key, maps failures, retries reads.

It is pyreqwest (Rust's reqwest and hyper, rustls for TLS) with its own pool: the client had been the
largest share of a submit's CPU, and bench/client_stack.py measures why this one (the README's
"Dependencies and why" has the figures). Every other outgoing call (JWKS documents, fal's webhook keys,
client webhooks through app/net/) uses httpx.
Callers never see a pyreqwest type: answers are `UpstreamResponse`, failures are `GatewayError`s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ConnectError, PyreqwestError
from pyreqwest.request import StreamRequest
from pyreqwest.response import Response

from app.errors import UpstreamTimeout, UpstreamUnavailable
from app.ops.metrics import Metrics
from app.pipeline.operations import READ_KINDS, SPENDING_KINDS, Operation, OpKind
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
    # The whole call, answer included; None for a status stream, bounded per read instead (`aiter_raw`).
    timeout: timedelta | None


class UpstreamResponse:
    """fal's answer: status, headers (case-insensitive; `items()` yields every value) and the body, read
    whole unless streamed."""

    __slots__ = ("status_code", "headers", "content", "_stream", "_request", "_idle_seconds", "_op")

    def __init__(
        self,
        status_code: int,
        headers: Mapping[str, str],
        content: bytes = b"",
        stream: tuple[StreamRequest, Response] | None = None,
        idle_seconds: float = 0.0,
        op: Operation | None = None,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self._request, self._stream = stream if stream is not None else (None, None)
        self._idle_seconds = idle_seconds
        self._op = op

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """A streamed body's chunks as they arrive; an idle or broken stream raises a GatewayError."""
        if self._stream is None:
            yield self.content
            return
        reader = self._stream.body_reader
        try:
            while True:
                async with asyncio.timeout(self._idle_seconds):
                    chunk = await reader.read_chunk()
                if chunk is None:
                    return
                yield bytes(chunk)
        except (PyreqwestError, TimeoutError) as exc:
            raise _mapped(exc, self._op) from None

    async def aclose(self) -> None:
        if self._request is not None:
            # Dropping a body left mid-stream closes its connection: it never goes back to the pool.
            request, self._request, self._stream = self._request, None, None
            await request.__aexit__(None, None, None)


class UpstreamClient:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        # The child of each label set, once: prometheus_client's labels() locks and validates per call.
        self._latency = {kind: metrics.upstream_latency.labels(operation=kind.value) for kind in OpKind} if metrics else {}
        connect = settings.upstream_connect_timeout
        self._client: Client = (
            ClientBuilder()
            .max_connections(settings.upstream_max_connections)
            .connect_timeout(timedelta(seconds=connect))
            # Waiting for a free pooled connection counts against the call.
            .pool_timeout(timedelta(seconds=settings.upstream_timeout))
            .follow_redirects(False)
            .default_cookie_store(False)  # fal's cookies are none of our business, nor the caller's
            # Bodies are relayed as fal sent them, and sometimes rewritten: ask for identity, decode nothing.
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .no_proxy()  # no proxy from the environment: fal's key goes where the settings say
            .http1_only()
            .user_agent("falgate")
            .build()
        )
        self._auth = f"Key {settings.upstream_key}"
        # A call's whole time, connecting (bounded on its own above) and reading the answer included.
        self._call_timeout = timedelta(seconds=settings.upstream_timeout)
        self._run_timeout = timedelta(seconds=settings.run_timeout)

    async def aclose(self) -> None:
        await self._client.close()

    def plan(self, op: Operation) -> UpstreamCall:
        s = self._settings
        if op.kind in (OpKind.SUBMIT, OpKind.RUN):
            base = s.fal_queue_url if op.kind is OpKind.SUBMIT else s.fal_run_url
            timeout = self._call_timeout if op.kind is OpKind.SUBMIT else self._run_timeout
            return UpstreamCall("POST", f"{base}/{op.model_id}", op.params, timeout)
        if op.kind is OpKind.UPLOAD_INITIATE:
            return UpstreamCall("POST", f"{s.fal_rest_url}/storage/upload/initiate", op.params, self._call_timeout)
        if op.kind is OpKind.TOKEN:
            return UpstreamCall("POST", f"{s.fal_rest_url}/tokens/", {}, self._call_timeout)
        base = f"{s.fal_queue_url}/{op.app_id}/requests/{op.request_id}"
        method, url, timeout = {
            OpKind.STATUS: ("GET", f"{base}/status", self._call_timeout),
            OpKind.STREAM: ("GET", f"{base}/status/stream", None),
            OpKind.RESULT: ("GET", base, self._call_timeout),
            OpKind.CANCEL: ("PUT", f"{base}/cancel", self._call_timeout),
        }[op.kind]
        return UpstreamCall(method, url, op.params, timeout)

    def headers(self, caller_headers: Mapping[str, str], has_body: bool, tags: str | None = None) -> dict[str, str]:
        out = {k: v for k, v in caller_headers.items() if k.lower() in FORWARDED_REQUEST_HEADERS}
        if tags is not None:  # built by app/fal/tags.py: never the caller's header as sent
            out["x-fal-tags"] = tags
        out["authorization"] = self._auth
        out["accept-encoding"] = "identity"  # bodies are relayed and sometimes rewritten: keep them plain
        if has_body:
            out["content-type"] = "application/json"
        return out

    async def send(
        self,
        op: Operation,
        caller_headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        stream: bool = False,
        tags: str | None = None,
    ) -> UpstreamResponse:
        """Send the operation upstream. With stream=True the caller must `aclose()` the response.

        `tags` (the X-Fal-Tags value) goes only on the calls fal bills, submits and sync runs: the
        attribution belongs to the job, and the header on a status poll would be noise."""
        call = self.plan(op)
        url = _url(call)
        headers = self.headers(caller_headers, body is not None, tags if op.kind in SPENDING_KINDS else None)
        attempts = 1 + self._settings.read_retries
        for attempt in range(attempts):
            started = time.perf_counter()
            try:
                response = await self._send_once(call, url, headers, body, op, stream)
            except (PyreqwestError, TimeoutError) as exc:
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
        self, call: UpstreamCall, url: str, headers: dict[str, str], body: bytes | None, op: Operation, stream: bool
    ) -> UpstreamResponse:
        builder = self._client.request(call.method, url).headers(headers)
        if body is not None:
            builder = builder.body_bytes(body)
        if call.timeout is not None:
            builder = builder.timeout(call.timeout)
        if stream:
            # No read-ahead: by default pyreqwest buffers some body before answering, holding back events.
            request = builder.streamed_read_buffer_limit(0).build_streamed()
            # Until fal answers, a stream is bounded like any call; after that, per read (idle timeout).
            async with asyncio.timeout(self._call_timeout.total_seconds()):
                response = await request.__aenter__()
            idle = self._settings.stream_idle_timeout
            return UpstreamResponse(response.status, response.headers, stream=(request, response), idle_seconds=idle, op=op)
        response = await builder.build().send()
        return UpstreamResponse(response.status, response.headers, bytes(await response.bytes()))

    async def put_signed(self, url: str, content_type: str, body: AsyncIterable[bytes], size: int) -> UpstreamResponse:
        """PUT a file to a signed storage URL fal handed out, streaming `body` (exactly `size` bytes).

        No fal key: the signature in the URL is the authorization, and the key must never reach a storage
        host. No retries: the URL may be single-use and `body` can only be read once.
        """
        # The whole PUT is capped, generously, so a storage host that stops reading cannot hold it forever.
        total_seconds = max(self._settings.upstream_timeout, 300.0)
        headers = {
            "content-type": content_type,
            # A declared length (not chunked encoding): signed-URL stores commonly refuse chunked PUTs.
            "content-length": str(size),
            "accept-encoding": "identity",
        }
        try:
            # The URL goes as fal wrote it: reqwest's parser keeps percent-escapes, so the signature is intact.
            request = (
                self._client.put(url).headers(headers).body_stream(body).timeout(timedelta(seconds=total_seconds)).build()
            )
            response = await request.send()
            return UpstreamResponse(response.status, response.headers, bytes(await response.bytes()))
        except TimeoutError:
            log.warning("upstream signed upload took longer than %ss", total_seconds)
            raise UpstreamTimeout("fal storage did not take the file in time", error_type="upstream_timeout") from None
        except (PyreqwestError, ValueError) as exc:
            raise _mapped(exc, None) from None


def _url(call: UpstreamCall) -> str:
    # The path is built from catalog ids and a checked request id; only the query needs quoting, once.
    return f"{call.url}?{_query(tuple(call.params.items()))}" if call.params else call.url


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
    return _never_connected(exc)


def _never_connected(exc: BaseException) -> bool:
    """True only when no connection was made. pyreqwest raises ConnectError also for a connection that
    closed after the request was written (hyper's "SendRequest" kind), when fal may well have the bytes;
    only hyper's "Connect" kind in the causes proves it never got them."""
    if not isinstance(exc, ConnectError):
        return False
    causes: list[Any] = exc.details.get("causes") or []
    return any(isinstance(cause, dict) and cause.get("message") == "client error (Connect)" for cause in causes)


def _mapped(exc: BaseException, op: Operation | None) -> UpstreamTimeout | UpstreamUnavailable:
    what = f"{op.kind.value} " if op else ""
    # The exception text can contain the upstream URL; only its class goes to the log.
    log.warning("upstream %sfailed: %s", what, type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("fal did not answer in time", error_type="upstream_timeout")
    return UpstreamUnavailable("Could not reach fal", error_type="upstream_unavailable")
