"""`FALGATE_AUTH=jwt`: verify a caller's JWT (typically a browser app's own login session) with PyJWT.

- HS256 with `FALGATE_JWT_SECRET`; RS256, ES256 and EdDSA with keys from `FALGATE_JWT_JWKS_URL`. With
  both set, both kinds are accepted. The algorithm picks the key source and never the other way round:
  HS256 only ever meets the shared secret and the asymmetric algorithms only JWKS keys, so a token
  "signed" with HS256 and a public key as the secret (algorithm confusion) and `alg: none` both fail.
- `exp` and `sub` are required, `iss` / `aud` are required and checked only when configured, with
  `FALGATE_JWT_LEEWAY_SECONDS` of clock skew. The caller id is `sub`.
- Refusals are 401 with a fixed reason; PyJWT's messages are not passed on.
- JWKS keys come from `app.net.jwks.JWKSCache` (PyJWT's own PyJWKClient fetches synchronously with
  urllib and would stall the event loop). A token whose `kid` is not in the set triggers a refetch, at
  most once per cooldown: a key rotated less than a cooldown after the last fetch is refused (401)
  until the cooldown ends. When no usable set is at hand (never fetched, or the refetch a token needed
  failed) the answer is 503 with Retry-After: the token may be fine, and the caller should retry
  rather than re-authenticate.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWTError

from app.callers.bearer import INVALID_TOKEN, unauthorized
from app.errors import ServiceUnavailable
from app.net.jwks import JWKSCache, KeySetUnavailable

log = logging.getLogger("falgate.auth")

HMAC_ALGORITHMS = frozenset({"HS256"})
JWKS_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash output
MAX_SUBJECT_LENGTH = 255
JWKS_TTL_SECONDS = 600.0
JWKS_COOLDOWN_SECONDS = 10.0

# Most specific first: several of these subclass each other (InvalidSignatureError is a DecodeError).
_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "Token has expired"),
    (jwt.ImmatureSignatureError, "Token is not valid yet"),
    (jwt.InvalidAudienceError, "Token audience is not accepted"),
    (jwt.InvalidIssuerError, "Token issuer is not accepted"),
    (jwt.InvalidSignatureError, "Token signature does not verify"),
    (jwt.InvalidAlgorithmError, "Token algorithm is not accepted"),
    (jwt.DecodeError, "Malformed token"),
)


class JWTVerifier:
    def __init__(
        self,
        *,
        secret: bytes | None,
        jwks: JWKSCache[PyJWK] | None,
        issuer: str | None,
        audience: str | None,
        leeway: float,
        own_http: httpx.AsyncClient | None = None,
    ) -> None:
        if secret is None and jwks is None:
            raise ValueError("FALGATE_AUTH=jwt needs FALGATE_JWT_SECRET or FALGATE_JWT_JWKS_URL")
        if secret is not None and len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"FALGATE_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes for HS256")
        self._secret = secret
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._own_http = own_http  # closed by aclose(); a client passed in by the app is the app's to close
        require = ["exp", "sub"] + (["iss"] if issuer else []) + (["aud"] if audience else [])
        # Without a configured audience PyJWT would refuse every token that carries `aud`: skip the check.
        self._options: dict[str, Any] = {"require": require, "verify_aud": audience is not None}

    async def verify(self, token: str) -> str:
        """The token's `sub` if the token is valid; raises a 401 (or a 503 if the JWKS is unreachable)."""
        alg, kid = _algorithm_and_kid(token)
        key = await self._key_for(alg, kid)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=self._options,  # type: ignore[arg-type]
            )
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"Token has no '{exc.claim}' claim", INVALID_TOKEN) from None
        except jwt.PyJWTError as exc:
            raise unauthorized(_reason(exc), INVALID_TOKEN) from None
        return _subject(claims)

    async def aclose(self) -> None:
        if self._own_http is not None:
            await self._own_http.aclose()

    async def _key_for(self, alg: str, kid: str | None) -> Any:
        if alg in HMAC_ALGORITHMS and self._secret is not None:
            return self._secret
        if alg in JWKS_ALGORITHMS and self._jwks is not None:
            return await _jwks_key(self._jwks, kid, alg)
        raise unauthorized("Token algorithm is not accepted", INVALID_TOKEN)


def jwks_cache(
    url: str, http: httpx.AsyncClient, *, ttl: float = JWKS_TTL_SECONDS, cooldown: float = JWKS_COOLDOWN_SECONDS
) -> JWKSCache[PyJWK]:
    """The cache of `FALGATE_JWT_JWKS_URL`'s keys for JWKS_ALGORITHMS."""
    return JWKSCache(url, http, _jwks_keys, ttl=ttl, cooldown=cooldown, label="JWKS")


async def _jwks_key(cache: JWKSCache[PyJWK], kid: str | None, alg: str) -> PyJWK:
    """The key to verify a token with this header `kid` and `alg`; 401 if unknown, 503 if unknowable."""
    try:
        current = await cache.current()
        found = _find(current.keys, kid, alg)
        if found is None and (newer := await cache.refetch(current)) is not None:
            found = _find(newer.keys, kid, alg)
    except KeySetUnavailable:
        raise ServiceUnavailable(
            "Cannot verify tokens right now: the signing keys (JWKS) could not be fetched",
            headers={"Retry-After": str(max(1, math.ceil(cache.cooldown)))},
        ) from None
    if found is None:
        raise unauthorized("Token signed by an unknown key", INVALID_TOKEN)
    return found


def _find(keys: tuple[PyJWK, ...], kid: str | None, alg: str) -> PyJWK | None:
    candidates = [key for key in keys if key.algorithm_name == alg]
    if kid is None:
        # A token without kid is only unambiguous against a set with one key for its algorithm.
        return candidates[0] if len(candidates) == 1 else None
    return next((key for key in candidates if key.key_id == kid), None)


def _jwks_keys(entries: list[object]) -> tuple[PyJWK, ...]:
    keys = tuple(key for key in map(_usable, entries) if key is not None)
    if not keys:
        # A set without a key for us is still the provider's answer: tokens get 401, not 503.
        log.warning("the JWKS has no key for %s", ", ".join(sorted(JWKS_ALGORITHMS)))
    return keys


def _usable(jwk: object) -> PyJWK | None:
    """A verification key for one of our algorithms, or None for anything else in the set."""
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
        return None
    try:
        key = PyJWK(jwk)
    except (PyJWTError, ValueError, TypeError, KeyError):
        return None  # an unsupported kty/crv, or a broken entry: the rest of the set still counts
    # Filtering on the key's own algorithm is what rules out algorithm confusion: an `oct` (HMAC)
    # entry or an RSA key labelled HS256 never enters the set.
    return key if key.algorithm_name in JWKS_ALGORITHMS else None


def _algorithm_and_kid(token: str) -> tuple[str, str | None]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise unauthorized("Malformed token", INVALID_TOKEN) from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
        raise unauthorized("Malformed token", INVALID_TOKEN)
    return alg, kid


def _reason(exc: jwt.PyJWTError) -> str:
    return next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "Invalid token")


def _subject(claims: dict[str, Any]) -> str:
    sub = claims.get("sub")
    # The caller id keys rate limits and shows up in logs: a bounded, printable, non-blank string.
    if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_SUBJECT_LENGTH or not sub.isprintable():
        raise unauthorized("Token 'sub' claim is not a usable caller id", INVALID_TOKEN)
    return sub
