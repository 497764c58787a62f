"""Who is calling: one `Authenticator`, built from the settings at startup, asked once per request."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import httpx
from starlette.requests import HTTPConnection

from app.callers.api_keys import ApiKeyTable
from app.callers.bearer import INVALID_TOKEN, bearer_token, missing_credentials, unauthorized
from app.callers.jwt_tokens import JWKS_COOLDOWN_SECONDS, JWKS_TTL_SECONDS, JWTVerifier, jwks_cache
from app.errors import GatewayError
from app.settings import Settings

log = logging.getLogger("falgate.auth")

AuthMethod = Literal["none", "api_key", "jwt"]
UNKNOWN_HOST = "unknown"


@dataclass(frozen=True, slots=True)
class Caller:
    id: str
    method: str  # "none" | "api_key" | "jwt"


class Authenticator:
    def __init__(self, method: AuthMethod, *, api_keys: ApiKeyTable | None = None, jwt: JWTVerifier | None = None) -> None:
        if method == "api_key" and api_keys is None:
            raise ValueError("FALGATE_AUTH=api_key needs FALGATE_API_KEYS")
        if method == "jwt" and jwt is None:
            raise ValueError("FALGATE_AUTH=jwt needs FALGATE_JWT_SECRET or FALGATE_JWT_JWKS_URL")
        self.method: AuthMethod = method
        self._api_keys = api_keys
        self._jwt = jwt

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        http: httpx.AsyncClient | None = None,
        *,
        jwks_ttl_seconds: float = JWKS_TTL_SECONDS,
        jwks_cooldown_seconds: float = JWKS_COOLDOWN_SECONDS,
    ) -> Authenticator:
        """Parse and check the auth settings now, so a bad FALGATE_API_KEYS stops startup (ValueError)."""
        if settings.auth == "api_key":
            raw = settings.api_keys.get_secret_value() if settings.api_keys is not None else ""
            return cls("api_key", api_keys=ApiKeyTable.parse(raw))
        if settings.auth == "jwt":
            return cls("jwt", jwt=_jwt_verifier(settings, http, jwks_ttl_seconds, jwks_cooldown_seconds))
        return cls("none")

    async def authenticate(self, request: HTTPConnection) -> Caller:
        """The caller of an HTTP request or a WebSocket handshake; raises Unauthorized (401).

        In `none` mode the caller is the client address. uvicorn runs with proxy_headers and
        forwarded_allow_ips=FALGATE_TRUSTED_PROXIES, so `client.host` already honours X-Forwarded-For
        from trusted proxies only; reading the header here would let any client pick its own id.
        """
        if self.method == "none":
            return _anonymous(request.client.host if request.client else None)
        return await self._verify(bearer_token(request))

    async def aclose(self) -> None:
        if self._jwt is not None:
            await self._jwt.aclose()

    async def _verify(self, token: str | None) -> Caller:
        if token is None:
            raise missing_credentials()
        try:
            if self._api_keys is not None:
                caller_id = self._api_keys.lookup(token)
                if caller_id is None:
                    raise unauthorized("Invalid API key", INVALID_TOKEN)
            else:
                assert self._jwt is not None
                caller_id = await self._jwt.verify(token)
        except GatewayError as exc:
            # The reason only, never the token; debug level so a flood of junk cannot flood the logs.
            log.debug("caller rejected (%s): %s", self.method, exc.detail)
            raise
        return Caller(id=caller_id, method=self.method)


def _anonymous(client_host: str | None) -> Caller:
    return Caller(id=client_host or UNKNOWN_HOST, method="none")


def _jwt_verifier(settings: Settings, http: httpx.AsyncClient | None, ttl: float, cooldown: float) -> JWTVerifier:
    own_http: httpx.AsyncClient | None = None
    jwks = None
    if settings.jwt_jwks_url:
        if http is None:
            http = own_http = httpx.AsyncClient(headers={"user-agent": "falgate"})
        jwks = jwks_cache(settings.jwt_jwks_url, http, ttl=ttl, cooldown=cooldown)
    secret = settings.jwt_secret.get_secret_value().encode("utf-8") if settings.jwt_secret is not None else None
    return JWTVerifier(
        secret=secret,
        jwks=jwks,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway_seconds,
        own_http=own_http,
    )
