"""The shared objects the lifespan owns, and the `Annotated` dependency routes use to reach them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.billing import parse_price_table
from app.settings import Settings
from app.upstream import UpstreamClient
from app.validation import ValidationLimits


@dataclass(slots=True)
class Gateway:
    settings: Settings
    upstream: UpstreamClient
    validation_limits: ValidationLimits
    prices: dict[str, float]

    @classmethod
    def create(cls, settings: Settings) -> Gateway:
        limits = ValidationLimits(
            max_prompt_length=settings.max_prompt_length,
            max_image_bytes=settings.max_image_bytes,
            allow_unknown_fields=settings.allow_unknown_fields,
        )
        return cls(
            settings=settings,
            upstream=UpstreamClient(settings),
            validation_limits=limits,
            prices=parse_price_table(settings.prices),
        )

    async def aclose(self) -> None:
        await self.upstream.aclose()


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]
