"""Where a caller's bearer token is read from, and the one shape of every 401 (RFC 6750).

The token comes from `Authorization: Bearer <token>`. Only two kinds of GET also take it from the
`access_token` query parameter: paths ending in `/events` (Server-Sent Events) and `/v1/ws`
(WebSocket handshakes). A browser's `EventSource` and `WebSocket` cannot set an Authorization header,
so for them the URL is the only way in. Everywhere else a token in the URL is refused outright rather
than ignored: URLs end up in proxy logs, browser history and Referer headers, and a queue route could
otherwise forward the stray parameter upstream.

Every refusal is a 401 with `WWW-Authenticate: Bearer realm="falgate"`, plus `error="invalid_request"`
for a malformed presentation and `error="invalid_token"` for a token that was read but rejected. RFC 6750
would answer invalid_request with 400; a 401 keeps "fix your credentials" one status for clients. The
`detail` strings are fixed text: they never quote what the caller sent.
"""

from __future__ import annotations

import re

from starlette.requests import HTTPConnection

from app.errors import Unauthorized

REALM = 'Bearer realm="falgate"'
INVALID_REQUEST = "invalid_request"
INVALID_TOKEN = "invalid_token"

QUERY_TOKEN_PARAM = "access_token"
QUERY_TOKEN_PATH_SUFFIXES = ("/events", "/v1/ws")

# Far above any real JWT or API key; bounds the work (hashing, base64) a junk header can cause.
MAX_TOKEN_LENGTH = 8192
# RFC 6750's b64token: what both our keys and JWTs are made of.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def unauthorized(detail: str, error: str | None = None) -> Unauthorized:
    challenge = REALM if error is None else f'{REALM}, error="{error}"'
    return Unauthorized(detail, headers={"WWW-Authenticate": challenge})


def missing_credentials() -> Unauthorized:
    return unauthorized("Missing credentials: send Authorization: Bearer <token>")


def _checked_token(token: str) -> str:
    """The token if it is shaped like one; a 401 otherwise, so no verifier sees arbitrary bytes."""
    if len(token) > MAX_TOKEN_LENGTH or B64TOKEN.fullmatch(token) is None:
        raise unauthorized("Malformed bearer token", INVALID_TOKEN)
    return token


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token the caller presented, or None if none; a malformed presentation raises a 401."""
    headers = conn.headers.getlist("authorization")
    if len(headers) > 1:
        raise unauthorized("Send a single Authorization header", INVALID_REQUEST)
    from_header = _from_header(headers[0]) if headers else None
    from_query = _from_query(conn)
    if from_header is not None and from_query is not None:
        raise unauthorized("Send the token either in the Authorization header or as access_token, not both", INVALID_REQUEST)
    token = from_header if from_header is not None else from_query
    return None if token is None else _checked_token(token)


def _from_header(value: str) -> str:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":  # auth-scheme names are case-insensitive (RFC 9110 11.1)
        raise unauthorized("The Authorization header must use the Bearer scheme", INVALID_REQUEST)
    token = rest.strip()
    if not token:
        raise unauthorized("The Authorization header has an empty Bearer token", INVALID_REQUEST)
    return token


def _from_query(conn: HTTPConnection) -> str | None:
    values = conn.query_params.getlist(QUERY_TOKEN_PARAM)
    if not values:
        return None
    if not _query_token_allowed(conn):
        raise unauthorized(
            "access_token in the URL is accepted only for EventSource (/events) and WebSocket (/v1/ws) "
            "connections: send Authorization: Bearer <token>",
            INVALID_REQUEST,
        )
    if len(values) > 1 or not values[0]:
        raise unauthorized("Send exactly one non-empty access_token", INVALID_REQUEST)
    return values[0]


def _query_token_allowed(conn: HTTPConnection) -> bool:
    # A WebSocket handshake is a GET too; its scope just has no "method".
    is_get = conn.scope["type"] == "websocket" or conn.scope.get("method") == "GET"
    return is_get and conn.url.path.endswith(QUERY_TOKEN_PATH_SUFFIXES)
