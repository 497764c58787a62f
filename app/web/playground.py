"""`GET /`: the browser playground, plain HTML/JS/CSS shipped inside the package (no build, no CDN).

The page only talks to this gateway's public API (`/v1/models`, `/v1/storage/upload`, `/v1/quote/{model_id}`,
the submit routes and `/v1/requests/{id}/events`), exactly as any browser app would, so it needs no privileges of its own. It is on
by default in emulator mode (nothing to spend) and off in live mode unless FALGATE_PLAYGROUND=true, because
in live mode every submit from it spends the server's fal credits.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Literal

from fastapi import APIRouter, Request, Response

from app.errors import NotFound
from app.settings import Settings

router = APIRouter(include_in_schema=False)

_MEDIA_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
}

# Scripts, styles and API calls may only come from the gateway itself, which enforces "no CDN at run time".
# Images and videos may come from anywhere: results live on fal's CDN (or the emulator's host).
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob: http: https:; media-src 'self' blob: http: https:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": _CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Small files that change with each release: revalidate rather than serve a stale page against a new API.
    "cache-control": "no-cache",
}


def playground_enabled(settings: Settings) -> bool:
    """FALGATE_PLAYGROUND when set; otherwise on only against the emulator, where submits cost nothing."""
    return settings.playground if settings.playground is not None else settings.emulated


@cache
def _asset(name: str) -> bytes:
    return files("app.web").joinpath("static", name).read_bytes()


def _serve(request: Request, ext: Literal["html", "js", "css"], name: str = "playground") -> Response:
    if not playground_enabled(request.app.state.gateway.settings):
        raise NotFound("Not Found")
    return Response(_asset(f"{name}.{ext}"), media_type=_MEDIA_TYPES[ext], headers=_HEADERS)


@router.get("/")
async def page(request: Request) -> Response:
    return _serve(request, "html")


@router.get("/static/playground.js")
async def script(request: Request) -> Response:
    return _serve(request, "js")


@router.get("/static/playground.css")
async def stylesheet(request: Request) -> Response:
    return _serve(request, "css")


@router.get("/static/quote.js")
async def quote_script(request: Request) -> Response:
    return _serve(request, "js", "quote")


@router.get("/static/notify.js")
async def notify_script(request: Request) -> Response:
    return _serve(request, "js", "notify")


@router.get("/sw.js")
async def service_worker(request: Request) -> Response:
    # At the root: a service worker controls only the paths below its own, and notifications need none.
    return _serve(request, "js", "sw")
