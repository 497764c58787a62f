"""Assembles the emulator: one FastAPI app whose path prefixes stand for fal's hosts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from . import control_routes, routes_models, routes_queue, routes_rest
from .config import EmulatorConfig
from .middleware import UpstreamGate
from .runtime import EmulatorRuntime


def create_emulator_app(config: EmulatorConfig) -> FastAPI:
    """The emulator as an ASGI app, standalone or mounted (`parent.mount("/_emulator", app)`).

    Its state lives in `app.state.emulator` (an `EmulatorRuntime`). Mounted, its lifespan does not
    run; nothing needs starting, but the parent should `await app.state.emulator.shutdown()` when it
    stops, to cancel running jobs and webhook deliveries and close the HTTP client.
    """
    runtime = EmulatorRuntime(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.startup()
        try:
            yield
        finally:
            await runtime.shutdown()

    app = FastAPI(title="falgate fal emulator", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = runtime

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(control_routes.router)
    app.include_router(routes_queue.router)
    app.include_router(routes_rest.router)
    app.include_router(routes_models.router)
    app.add_middleware(UpstreamGate, runtime=runtime)
    # Added last so it is outermost: preflights are answered before the key check, as fal's hosts
    # (and its CDN, which browsers PUT uploads to directly) allow any origin.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-fal-request-id", "x-fal-error-type", "content-range", "accept-ranges"],
    )
    return app
