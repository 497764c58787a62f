"""The gateway's errors and the one place that turns any of them into a JSON answer.

Every refusal is an `HTTPException` subclass raised where it is decided; the handlers here give all of
them one shape (`{"detail": ...}` plus named extras), so no route formats its own error bodies and no
unexpected exception leaks a traceback or a secret to the caller.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from app.responses import JSONResponse
from app.store.base import StoreUnavailable

log = logging.getLogger("falgate.errors")

# How long a caller is told to wait when the store is out: the store's own timeouts are about as long.
STORE_RETRY_AFTER_SECONDS = 2

# nginx's code for "the client closed the connection before the answer": for the access log and metrics.
CLIENT_CLOSED_REQUEST = 499


class GatewayError(HTTPException):
    """A refusal with a JSON body. `extra` fields are merged into the body next to `detail`."""

    status_code = 400

    def __init__(self, detail: Any, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(status_code=self.status_code, detail=detail, headers=headers)
        self.extra = extra


class BadRequest(GatewayError):
    status_code = 400


class Unauthorized(GatewayError):
    status_code = 401


class PaymentRequired(GatewayError):
    status_code = 402


class NotFound(GatewayError):
    status_code = 404


class MethodNotAllowed(GatewayError):
    status_code = 405


class PayloadTooLarge(GatewayError):
    status_code = 413


class UnsupportedMediaType(GatewayError):
    status_code = 415


class InvalidInput(GatewayError):
    """fal's own validation shape, so fal clients raise their `ValidationError` with `body.detail`."""

    status_code = 422


class TooManyRequests(GatewayError):
    status_code = 429


class UpstreamUnavailable(GatewayError):
    status_code = 502


class ServiceUnavailable(GatewayError):
    status_code = 503


class UpstreamTimeout(GatewayError):
    status_code = 504


def _clean_validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # FastAPI's default echoes "input" and "ctx": a data URI can be megabytes and a token is a secret.
    return [{"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")} for err in errors]


def error_response(exc: StarletteHTTPException) -> JSONResponse:
    """The JSON answer for a refusal, wherever it was raised."""
    extra = exc.extra if isinstance(exc, GatewayError) else {}
    return JSONResponse({"detail": exc.detail, **extra}, status_code=exc.status_code, headers=exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": _clean_validation_errors(list(exc.errors()))}, status_code=422)


def client_gone(request: Request) -> Response:
    """The answer to a client that left mid-body: nobody will read it, so it only labels the request.
    Not an error of ours, so no traceback and no 500 in the access log or the metrics."""
    log.info("client went away on %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _client_disconnected(request: Request, exc: ClientDisconnect) -> Response:
    return client_gone(request)


async def _store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
    # A documented 503, so callers (and fal, for its webhooks) retry: never a 500. The text may name
    # the store's address, so the log gets the type only.
    log.warning("store unavailable on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"detail": "The gateway's store is unavailable; retry shortly"},
        status_code=503,
        headers={"retry-after": str(STORE_RETRY_AFTER_SECONDS)},
    )


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The exception text may quote a header or a URL with credentials: log its type and place only.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=False)
    return JSONResponse({"detail": "Internal gateway error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, _client_disconnected)  # type: ignore[arg-type]
    app.add_exception_handler(StoreUnavailable, _store_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected_error)
