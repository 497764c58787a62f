"""Strict parsing of `x-fal-target-url`: which fal operation a `@fal-ai/client` request asks for.

The header is attacker-controlled, so it is only ever *classified*, never connected to: the result is an
`Operation`, and the upstream URL is rebuilt from the configured base for that host. Anything that is not
plainly one of the operations we serve is refused with 400 and a reason.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from app.doors.table import SUBMIT_METHOD, per_request_route
from app.errors import BadRequest, NotFound
from app.pipeline.operations import FrontDoor, Operation, OpKind, per_request_operation, spending_operation

QUEUE_HOST = "queue.fal.run"
RUN_HOST = "fal.run"
REST_HOSTS = frozenset({"rest.fal.ai", "rest.alpha.fal.ai"})
FAL_HOSTS = frozenset({QUEUE_HOST, RUN_HOST}) | REST_HOSTS

_MAX_LENGTH = 4096
# Path segments are plain names: no percent-escapes, dots-only segments, backslashes or empty segments.
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]*$")
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\%@\[\]]")
# The everyday shape of a target, which passes every check in `_split`: matched in one step on the hot
# path. Anything else gets the step-by-step checks, which also name the reason for a refusal.
_PLAIN_TARGET = re.compile(
    r"https://(?P<host>queue\.fal\.run|fal\.run|rest\.fal\.ai|rest\.alpha\.fal\.ai)(?::443)?"
    r"(?P<path>(?:/[A-Za-z0-9][A-Za-z0-9._~-]*)+)/?(?:\?(?P<query>[^#]*))?"
)


class TargetRefused(BadRequest):
    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid x-fal-target-url: {reason}")


def parse_target(method: str, raw: str | None, allow_token_minting: bool = False) -> Operation:
    if not raw:
        raise TargetRefused("the header is missing")
    if len(raw) > _MAX_LENGTH:
        raise TargetRefused("too long")
    host, segments, query = _split(raw)
    if host == QUEUE_HOST:
        return _queue_operation(method, segments, query)
    if host == RUN_HOST:
        if method != "POST":
            raise TargetRefused(f"{method} is not a run operation")
        return _with_model(OpKind.RUN, "/".join(segments))
    if segments == ["storage", "upload", "initiate"] and method == "POST":
        storage_type = query.get("storage_type", "fal-cdn-v3")
        return Operation(OpKind.UPLOAD_INITIATE, FrontDoor.PROXY, params={"storage_type": storage_type})
    if segments == ["tokens"] and method == "POST":
        if not allow_token_minting:
            raise TargetRefused("token minting is disabled on this gateway (FALGATE_ALLOW_TOKEN_MINTING)")
        return Operation(OpKind.TOKEN, FrontDoor.PROXY)
    raise TargetRefused("not an operation this gateway serves")


def _split(raw: str) -> tuple[str, list[str], dict[str, str]]:
    plain = _PLAIN_TARGET.fullmatch(raw)
    if plain is not None:
        return plain["host"], plain["path"][1:].split("/"), _query(plain["query"] or "")
    if _FORBIDDEN_CHARS.search(raw.split("?", 1)[0]):
        raise TargetRefused("encoded, escaped or credential characters are not allowed")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise TargetRefused("not a URL") from None
    if parts.scheme != "https":
        raise TargetRefused("only https URLs are allowed")
    if parts.fragment or "#" in raw:  # urlsplit drops an empty fragment ("...#") without a trace
        raise TargetRefused("fragments are not allowed")
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("credentials in the URL are not allowed")
    if port not in (None, 443):
        raise TargetRefused("only the default https port is allowed")
    if host not in FAL_HOSTS or parts.netloc.split(":")[0] != host:
        raise TargetRefused("the host is not one of fal's")
    path = parts.path
    if not path.startswith("/"):
        raise TargetRefused("the path is missing")
    segments = path[1:].split("/")
    if segments and segments[-1] == "" and len(segments) > 1:
        segments.pop()  # a single trailing slash, as in https://rest.fal.ai/tokens/
    if not all(_SEGMENT.match(s) and not set(s) <= {"."} for s in segments):
        raise TargetRefused("the path has an empty, relative or unusual segment")
    return host, segments, _query(parts.query)


def _query(raw: str) -> dict[str, str]:
    try:
        return dict(parse_qsl(raw, keep_blank_values=True, strict_parsing=bool(raw)))
    except ValueError:
        raise TargetRefused("the query string is malformed") from None


def _with_model(kind: OpKind, model_id: str, webhook: str | None = None) -> Operation:
    try:
        return spending_operation(kind, FrontDoor.PROXY, model_id, webhook)
    except NotFound:
        raise TargetRefused(f"{model_id!r} is not a model this gateway serves") from None


def _queue_operation(method: str, segments: list[str], query: dict[str, str]) -> Operation:
    if "requests" in segments:
        at = segments.index("requests")
        app_path, rest = "/".join(segments[:at]), segments[at + 1 :]
        route = per_request_route(method, tuple(rest[1:])) if rest else None
        if route is None or not app_path:
            raise TargetRefused("not a queue operation this gateway serves")
        try:
            return per_request_operation(route.kind, FrontDoor.PROXY, app_path, rest[0], query.get("logs"))
        except NotFound:
            raise TargetRefused(f"{app_path!r} is not an app this gateway serves") from None
    if method != SUBMIT_METHOD:
        raise TargetRefused(f"{method} is not a queue operation")
    return _with_model(OpKind.SUBMIT, "/".join(segments), query.get("fal_webhook"))
