"""CORS for browsers calling the gateway (the `@fal-ai/client` proxy route, the queue paths).

One definition, used by the application's middleware stack and by app/doors/fast_path.py, so a preflight and
the request after it get the same answer whichever way the request went.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

ALLOWED_METHODS = ["GET", "POST", "PUT"]
EXPOSED_HEADERS = ["x-fal-request-id", "x-fal-request-timeout-type", "x-fal-error-type", "retry-after"]
MAX_AGE_SECONDS = 600


def cors_options(origins: list[str]) -> dict:
    return {
        "allow_origins": origins,
        "allow_methods": ALLOWED_METHODS,
        "allow_headers": ["*"],
        "expose_headers": EXPOSED_HEADERS,
        "max_age": MAX_AGE_SECONDS,
    }


def cors(app: ASGIApp, origins: list[str]) -> ASGIApp:
    return CORSMiddleware(app, **cors_options(origins))
