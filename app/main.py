"""The application factory: routers, middleware, error handlers and the lifespan that owns shared clients.

`uvicorn app.main:app` and `falgate serve` both end up here.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import ValidationError
from starlette.middleware.cors import CORSMiddleware

from app.catalog import registry
from app.catalog.billing import parse_price_table
from app.catalog.price_rules import parse_price_rules
from app.catalog.registry import MODELS, ModelSources
from app.catalog.schema_documents import docs_components
from app.doors import proxy, queue
from app.doors.route import FrontDoors
from app.emulator import EmulatorConfig, create_emulator_app
from app.errors import install_error_handlers
from app.gateway import open_gateway
from app.ops import health
from app.ops.access import RequestObserver
from app.ops.cors import cors_options
from app.ops.logs import configure_process, stop_logging
from app.ops.metrics import Metrics
from app.relay import fal_webhook as fal_webhooks
from app.relay import sinks as events
from app.settings import EMULATOR_MOUNT, Settings
from app.web import callers, catalog, deliveries, devices, playground, quote, storage

log = logging.getLogger("falgate")


# Young objects the collector may accumulate before a collection; Python's default is 700. See below.
_GC_YOUNG_THRESHOLD = 10_000


def _settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the hot paths, once the app has started.

    Everything imported and built by now (FastAPI, pydantic's schemas, the catalog) lives as long as the
    process: `gc.freeze()` takes it out of the collector's reach, so a full collection scans what requests
    created, not every startup object (those full collections were what set the status path's p99). A
    larger young generation makes collections rarer: each in-flight request holds a few dozen tracked
    objects (the coroutine frames and closures of every middleware layer). Refcounting still frees all
    but reference cycles at once. bench/README.md has the measurements.
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, older, oldest)


def load_settings() -> Settings:
    """Settings from the environment, or a clear message and exit: never a traceback for a typo."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"  - {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in exc.errors()]
        raise SystemExit("falgate: invalid configuration:\n" + "\n".join(lines)) from None


def model_sources(settings: Settings) -> ModelSources:
    """Where FALGATE_MODELS' documents come from, as the registry wants them."""
    return ModelSources(
        ids=tuple(settings.models),
        schema_dir=Path(settings.model_schema_dir) if settings.model_schema_dir else None,
        cache_dir=Path(settings.models_cache_path),
        # The embedded emulator's key is not fal's, and the emulator is not listening yet: no model API.
        api_url=None if settings.emulated else settings.fal_api_url,
        key=settings.upstream_key,
        strict=settings.models_strict,
        rules=parse_price_rules(settings.price_rules),
        prices=parse_price_table(settings.prices),
    )


def load_models(settings: Settings) -> None:
    """Register FALGATE_MODELS before any route is built, or stop with the message naming each failure."""
    try:
        registry.load(model_sources(settings))
    except registry.ModelLoadError as exc:
        raise SystemExit(f"falgate: {exc}") from None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    load_models(settings)
    emulator = None
    if settings.emulated:
        settings.use_embedded_emulator()
        emulator = create_emulator_app(
            EmulatorConfig(
                key=settings.upstream_key,
                job_seconds=settings.emulator_job_seconds,
                public_url=settings.gateway_url + EMULATOR_MOUNT,
                # Its jobs and model API know the configured endpoints' categories from the same documents.
                schema_dir=settings.model_schema_dir,
            )
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = await open_gateway(settings, metrics)
        app.state.gateway = gateway
        gateway.start()
        _settle_garbage_collector()
        if emulator is not None:
            await emulator.state.emulator.startup()
            log.warning(
                "No FAL_KEY: running against the built-in fal emulator at %s (no credits are spent)",
                settings.fal_queue_url.rsplit("/", 1)[0],
            )
        try:
            yield
        finally:
            # In-flight HTTP requests are done or cancelled by now (uvicorn drains them first, up to the
            # grace); submits fal may be running still get their answer recorded. Then send what is due.
            try:
                await gateway.drain()
                await gateway.outbox.flush(time.monotonic() + min(5.0, settings.shutdown_grace_seconds / 2))
                if emulator is not None:
                    await emulator.state.emulator.shutdown()
                await gateway.aclose()
            finally:
                # Write every queued log line now (a failed close included: its traceback is one of them):
                # after a signal uvicorn re-raises it, and atexit never runs.
                stop_logging()

    metrics = Metrics()

    app = FastAPI(
        title="falgate",
        summary="A gateway for fal.ai's image-to-video models: the key stays on the server.",
        version="0.1.0",
        lifespan=lifespan,
        # falgate's own metrics and access log cover what FastAPI's OpenTelemetry hooks would record, and
        # those hooks' exception logs could carry a secret from an exception's text. Off, they also stop
        # costing every request a check of the environment and the global providers.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    install_error_handlers(app)
    if settings.cors_origins:  # without origins CORS would only wrap every response to add nothing
        app.add_middleware(CORSMiddleware, **cors_options(settings.cors_origins))
    # Added last, so outermost: it sees every answer, including the error handlers' and CORS refusals.
    app.add_middleware(RequestObserver, metrics=metrics)
    # First in the router: the front doors' requests are matched by a lookup, ahead of every other route.
    app.router.routes.insert(0, FrontDoors(settings.proxy_path, settings.allow_token_minting))
    app.include_router(health.router)
    app.include_router(catalog.router)
    app.include_router(callers.router)
    app.include_router(quote.router)
    app.include_router(events.router)
    app.include_router(fal_webhooks.router)
    app.include_router(deliveries.router)
    app.include_router(devices.router)
    app.include_router(proxy.proxy_router(settings.proxy_path))
    app.include_router(storage.router)
    if emulator is not None:
        app.mount(EMULATOR_MOUNT, emulator)
    app.include_router(playground.router)
    app.include_router(queue.router)  # last: it ends in a catch-all for unknown models
    app.openapi = lambda: _openapi(app, settings.proxy_path)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, proxy_path: str) -> dict:
    """FastAPI's schema plus the front doors' paths and each model's input schema, which submits reference."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schema.setdefault("paths", {}).update({**queue.openapi_paths(), **proxy.openapi_paths(proxy_path)})
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for spec in MODELS.values():
            if spec.schema is not None:
                components.update(docs_components(spec.schema.doc, queue.docs_prefix(spec)))
                continue
            model_schema = spec.input_model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[spec.input_model.__name__] = model_schema
        app.openapi_schema = schema
    return app.openapi_schema


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app on first access, so importing this module has no side effects.
    # It sets up logging as `falgate serve` does: uvicorn's own log set-up would print unscrubbed lines.
    if name == "app":
        settings = load_settings()
        configure_process(settings)
        globals()["app"] = application = create_app(settings)
        return application
    raise AttributeError(name)
