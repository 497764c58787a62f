"""CORS for browsers calling the gateway (the `@fal-ai/client` proxy route, the queue paths).

Starlette's CORSMiddleware with these options, added only when origins are configured (without any, it
would wrap every response to add nothing).
"""

from __future__ import annotations

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

