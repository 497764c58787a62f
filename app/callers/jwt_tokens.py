"""`FALGATE_AUTH=jwt`: verify a caller's JWT (typically a browser app's own login session) with PyJWT.

- HS256 with `FALGATE_JWT_SECRET`; RS256, ES256 and EdDSA with keys from `FALGATE_JWT_JWKS_URL`. With
  both set, both kinds are accepted. The algorithm picks the key source and never the other way round:
  HS256 only ever meets the shared secret and the asymmetric algorithms only JWKS keys, so a token
  "signed" with HS256 and a public key as the secret (algorithm confusion) and `alg: none` both fail.
- `exp` and `sub` are required, `iss` / `aud` are required and checked only when configured, with
  `FALGATE_JWT_LEEWAY_SECONDS` of clock skew. The caller id is `sub`.
- Refusals are 401 with a fixed reason; PyJWT's messages are not passed on.
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt

from app.callers.bearer import INVALID_TOKEN, unauthorized
from app.callers.jwks import JWKSCache

HMAC_ALGORITHMS = frozenset({"HS256"})
JWKS_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash output
MAX_SUBJECT_LENGTH = 255

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
        jwks: JWKSCache | None,
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
            return await self._jwks.key(kid, alg)
        raise unauthorized("Token algorithm is not accepted", INVALID_TOKEN)


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
