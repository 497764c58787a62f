"""The shared objects the lifespan owns, and the `Annotated` dependencies routes use to reach them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import httpx
from fastapi import Depends, Request

from app.auth import Authenticator, Caller
from app.billing import parse_price_table
from app.bus import EventBus, open_bus
from app.fal_signatures import FalWebhookVerifier
from app.idempotency import Idempotency
from app.leases import Leases, open_leases
from app.ledger import Ledger
from app.metrics import Metrics
from app.ratelimit import RateLimiter
from app.settings import Settings
from app.store import Store, StoreUnavailable, open_store
from app.upstream import UpstreamClient
from app.validation import ValidationLimits

if TYPE_CHECKING:
    from app.outbox import Outbox
    from app.poller import Poller
    from app.watchers import Watchers

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
    # Background workers that need the gateway itself; set by `open`.
    watchers: Watchers = field(init=False)
    outbox: Outbox = field(init=False)
    poller: Poller = field(init=False)

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics) -> Gateway:
        from app.outbox import Outbox
        from app.poller import Poller
        from app.watchers import Watchers

        prices = parse_price_table(settings.prices)
        store = open_store(settings.store_url)
        try:
            await store.ping()
        except StoreUnavailable:
            # Start anyway: /readyz reports it, and requests get 503 until the store is back.
            log.warning("the store is not reachable yet")
        http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=settings.upstream_connect_timeout))
        gateway = cls(
            settings=settings,
            upstream=UpstreamClient(settings, metrics),
            http=http,
            validation_limits=ValidationLimits(
                max_prompt_length=settings.max_prompt_length,
                max_image_bytes=settings.max_image_bytes,
                allow_unknown_fields=settings.allow_unknown_fields,
            ),
            prices=prices,
            store=store,
            bus=open_bus(settings.store_url),
            leases=open_leases(settings.store_url),
            auth=Authenticator.from_settings(settings, http),
            fal_verifier=FalWebhookVerifier(settings.fal_jwks_url, http),
            limiter=RateLimiter.for_store(settings.store_url, settings.rate_limit_submit, settings.rate_limit_read),
            ledger=Ledger(store, settings, prices),
            idempotency=Idempotency(store, settings.idempotency_ttl_seconds, pending_ttl=settings.upstream_timeout + 30),
            metrics=metrics,
        )
        gateway.watchers = Watchers(gateway)
        gateway.outbox = Outbox(gateway)
        gateway.poller = Poller(gateway)
        return gateway

    def start(self) -> None:
        self.outbox.start()
        self.poller.start()

    async def aclose(self) -> None:
        await self.poller.aclose()
        await self.watchers.aclose()
        await self.outbox.aclose()
        await self.bus.close()
        await self.leases.close()
        await self.auth.aclose()
        await self.upstream.aclose()
        await self.http.aclose()
        await self.store.close()


async def _gateway(request: Request) -> Gateway:
    # async: a plain def dependency would run in the thread pool, a thread hop on every request.
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


async def _caller(request: Request, gateway: GatewayDep) -> Caller:
    return await gateway.auth.authenticate(request)


CallerDep = Annotated[Caller, Depends(_caller)]
