"""The shared objects the lifespan owns, and the `Annotated` dependencies routes use to reach them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.auth import Authenticator, Caller
from app.billing import parse_price_table
from app.idempotency import Idempotency
from app.ledger import Ledger
from app.ratelimit import RateLimiter
from app.settings import Settings
from app.store import Store, StoreUnavailable, open_store
from app.upstream import UpstreamClient
from app.validation import ValidationLimits

log = logging.getLogger("falgate")


@dataclass(slots=True)
class Gateway:
    settings: Settings
    upstream: UpstreamClient
    validation_limits: ValidationLimits
    prices: dict[str, float]
    store: Store
    auth: Authenticator
    limiter: RateLimiter
    ledger: Ledger
    idempotency: Idempotency

    @classmethod
    async def open(cls, settings: Settings) -> Gateway:
        prices = parse_price_table(settings.prices)
        store = open_store(settings.store_url)
        try:
            await store.ping()
        except StoreUnavailable:
            # Start anyway: /readyz reports it, and requests get 503 until the store is back.
            log.warning("the store is not reachable yet")
        return cls(
            settings=settings,
            upstream=UpstreamClient(settings),
            validation_limits=ValidationLimits(
                max_prompt_length=settings.max_prompt_length,
                max_image_bytes=settings.max_image_bytes,
                allow_unknown_fields=settings.allow_unknown_fields,
            ),
            prices=prices,
            store=store,
            auth=Authenticator.from_settings(settings),
            limiter=RateLimiter.for_store(settings.store_url, settings.rate_limit_submit, settings.rate_limit_read),
            ledger=Ledger(store, settings, prices),
            idempotency=Idempotency(
                store, settings.idempotency_ttl_seconds, pending_ttl=settings.upstream_timeout + 30
            ),
        )

    async def aclose(self) -> None:
        await self.auth.aclose()
        await self.upstream.aclose()
        await self.store.close()


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]


async def _caller(request: Request, gateway: GatewayDep) -> Caller:
    return await gateway.auth.authenticate(request)


CallerDep = Annotated[Caller, Depends(_caller)]
