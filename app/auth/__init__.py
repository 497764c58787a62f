"""Caller authentication, chosen by `FALGATE_AUTH`:

- `none`: the caller is the client IP (X-Forwarded-For honoured from FALGATE_TRUSTED_PROXIES only, by uvicorn).
- `api_key`: `Authorization: Bearer <key>` against FALGATE_API_KEYS (see app.auth.api_keys).
- `jwt`: `Authorization: Bearer <jwt>`, HS256 or keys from a JWKS; the caller is `sub` (see app.auth.jwt_tokens).

Where tokens are read from, and the 401 shape, are in app.auth.bearer. The token itself is only ever
used to find the caller: it is not logged, not echoed in a refusal, and must not be forwarded upstream
(the upstream client replaces Authorization with the fal key).
"""

from app.auth.authenticator import Authenticator, Caller

__all__ = ["Authenticator", "Caller"]
