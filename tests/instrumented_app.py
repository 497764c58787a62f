"""The gateway with one extra middleware and one extra exception handler, as a deployment might add them.

Started by tests/test_one_request_path.py under uvicorn (`--factory`), to prove that what is added to the
app later sees the front doors' hot requests too.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import GatewayError, error_response
from app.main import create_app

MIDDLEWARE_HEADER = b"x-test-middleware"
HANDLER_HEADER = "x-test-handler"


class TagEveryAnswer:
    """Adds a header to every HTTP answer, and counts the requests it saw in its own header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.seen += 1
        seen = str(self.seen).encode()

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (MIDDLEWARE_HEADER, seen)]
            await send(message)

        await self.app(scope, receive, tagged)


async def _tag_refusal(request: Request, exc: GatewayError) -> Response:
    response = error_response(exc)
    response.headers[HANDLER_HEADER] = f"{type(exc).__name__} on {request.url.path}"
    return response


def create() -> FastAPI:
    app = create_app()
    app.add_middleware(TagEveryAnswer)
    app.add_exception_handler(GatewayError, _tag_refusal)  # type: ignore[arg-type]
    return app
