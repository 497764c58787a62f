"""The shared objects the lifespan owns, and the `Annotated` dependencies routes use to reach them.

`Gateway` is a plain container: `open_gateway` builds every part with its dependencies named, so no
part imports the container back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import httpx
from fastapi import Depends, Request, Response

from app.callers.authenticator import Authenticator, Caller
from app.callers.idempotency import Idempotency
from app.callers.ledger import Ledger
from app.callers.ratelimit import RateLimiter
from app.catalog.billing import parse_price_table
from app.catalog.file_urls import FileUrlPolicy
from app.catalog.spec import ValidationLimits
from app.fal.signatures import FalWebhookVerifier
from app.fal.upstream import UpstreamClient
from app.ops.metrics import Metrics
from app.pipeline.shielded import ShieldedCalls
from app.pipeline.status_flight import StatusFlights
from app.relay.bus import EventBus, open_bus
from app.relay.completions import Completions
from app.relay.fal_account import FalAccount
from app.relay.leases import Leases, open_leases
from app.relay.outbox import Outbox
from app.relay.poller import Poller
from app.relay.push.dispatch import Push, open_push
from app.relay.watchers import Watchers
from app.settings import Settings
from app.store import Store, StoreUnavailable, open_redis_pool, open_store

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

log = logging.getLogger("falgate")


@dataclass(slots=True)
class Gateway:
    settings: Settings
    upstream: UpstreamClient
    http: httpx.AsyncClient  # for public documents (JWKS); fal's API goes through `upstream`
    validation_limits: ValidationLimits
    prices: dict[str, float]
    store: Store
    bus: EventBus
    leases: Leases
    auth: Authenticator
    fal_verifier: FalWebhookVerifier
    limiter: RateLimiter
    ledger: Ledger
    idempotency: Idempotency
    metrics: Metrics
    completions: Completions
    fal_account: FalAccount
    watchers: Watchers
    outbox: Outbox
    poller: Poller
    push: Push
    # Submits and sync runs whose answer from fal is still awaited; drained at shutdown.
    shielded: ShieldedCalls = field(default_factory=ShieldedCalls)
    # Status polls of requests in flight waiting on one shared upstream call (app/pipeline/status_flight.py).
    status_flights: StatusFlights = field(default_factory=StatusFlights)
    # On a Redis store, the one connection pool the store, bus, leases and limiter share; None on SQLite.
    redis_pool: ConnectionPool | None = None

    def start(self) -> None:
        self.outbox.start()
        self.poller.start()

    async def drain(self) -> None:
        """At shutdown, after uvicorn cancelled what was left of the requests: fal's answers to the
        submits it may be running are still awaited (up to the upstream timeout) and recorded."""
        await self.shielded.drain(self.settings.upstream_timeout + 5.0)

    async def aclose(self) -> None:
        await self.poller.aclose()
        await self.watchers.aclose()
        await self.outbox.aclose()
        await self.bus.close()
        await self.leases.close()
        await self.auth.aclose()
        await self.upstream.aclose()
        await self.http.aclose()
        await self.limiter.close()
        await self.store.close()
        if self.redis_pool is not None:  # last: every part above that used it is closed
            await self.redis_pool.aclose()


async def open_gateway(settings: Settings, metrics: Metrics) -> Gateway:
    prices = parse_price_table(settings.prices)
    redis_pool = open_redis_pool(settings.store_url)
    store = open_store(settings.store_url, redis_pool=redis_pool)
    try:
        await store.ping()
    except StoreUnavailable:
        # Start anyway: /readyz reports it, and requests get 503 until the store is back.
        log.warning("the store is not reachable yet")
    http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=settings.upstream_connect_timeout))
    upstream = UpstreamClient(settings, metrics)
    bus = open_bus(settings.store_url, redis_pool=redis_pool)
    leases = open_leases(settings.store_url, redis_pool=redis_pool)
    ledger = Ledger(store, settings, prices)
    push = open_push(store, settings)
    outbox = Outbox(
        store,
        metrics,
        secret=settings.webhook_secret,
        allow_private=settings.webhook_allow_private,
        retry_scale=settings.webhook_retry_scale,
        push=push,
    )
    push.on_queued(outbox.wake)
    completions = Completions(store, bus, ledger, upstream, wake_outbox=outbox.wake, queue_push=push.queue)
    return Gateway(
        settings=settings,
        upstream=upstream,
        http=http,
        validation_limits=ValidationLimits(
            max_prompt_length=settings.max_prompt_length,
            max_image_bytes=settings.max_image_bytes,
            allow_unknown_fields=settings.allow_unknown_fields,
            file_urls=FileUrlPolicy.for_upstream(_upstream_urls(settings), allow_private=settings.allow_private_file_urls),
        ),
        prices=prices,
        store=store,
        bus=bus,
        leases=leases,
        auth=Authenticator.from_settings(settings, http),
        fal_verifier=FalWebhookVerifier(settings.fal_jwks_url, http),
        limiter=RateLimiter.for_store(
            settings.store_url, settings.rate_limit_submit, settings.rate_limit_read, redis_pool=redis_pool
        ),
        ledger=ledger,
        idempotency=Idempotency(store, settings.idempotency_ttl_seconds, pending_ttl=settings.upstream_timeout + 30),
        metrics=metrics,
        completions=completions,
        fal_account=FalAccount(settings.fal_user_id),
        watchers=Watchers(
            store, upstream, leases, ledger, completions, metrics, lease_seconds=settings.watcher_lease_seconds
        ),
        outbox=outbox,
        push=push,
        poller=Poller(
            store,
            upstream,
            leases,
            ledger,
            completions,
            interval=settings.poll_interval_seconds,
            grace=settings.webhook_grace_seconds,
        ),
        redis_pool=redis_pool,
    )


async def _gateway(request: Request) -> Gateway:
    # async: a plain def dependency would run in the thread pool, a thread hop on every request.
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


async def _caller(request: Request, gateway: GatewayDep) -> Caller:
    return await gateway.auth.authenticate(request)


CallerDep = Annotated[Caller, Depends(_caller)]


def _limited_caller(policy: str) -> Callable[..., Awaitable[Caller]]:
    async def dependency(response: Response, caller: CallerDep, gateway: GatewayDep) -> Caller:
        # Counted before the route looks anything up, as the pipeline does: a refused call costs nothing.
        verdict = await gateway.limiter.hit(caller.id, policy)
        response.headers.update(verdict.headers())
        return caller

    return dependency


# The caller of a `/v1/*` route, counted against its rate limit: reads, or (for routes that make the
# gateway send something outbound, as redeliver does) the submit class. A 429 carries the same
# RateLimit-Policy / RateLimit / Retry-After headers as the front doors' refusals.
ReadCallerDep = Annotated[Caller, Depends(_limited_caller("read"))]
SubmitCallerDep = Annotated[Caller, Depends(_limited_caller("submit"))]


def _upstream_urls(settings: Settings) -> list[str]:
    """Where fal's own file URLs point: its hosts, and in emulator mode the gateway's public URL as well."""
    urls = [settings.fal_rest_url, settings.fal_queue_url, settings.fal_run_url]
    return [*urls, settings.gateway_url] if settings.emulated else urls
