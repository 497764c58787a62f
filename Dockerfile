# syntax=docker/dockerfile:1
# The falgate gateway image. Build from the repository root:
#   docker build -t falgate .
# Run (emulator mode: no FAL_KEY, nothing is spent):
#   docker run --rm -p 8000:8000 falgate
# deploy/README.md covers production settings; tests/test_deploy.py runs this file's ENV and CMD outside a
# container, so keep ENV and CMD in the simple forms it parses (ENV key=value, CMD as a JSON array).

# Both stages use the same base so that the venv's interpreter symlink (/opt/venv/bin/python ->
# /usr/local/bin/python3.11) still resolves after the copy. The Debian release is part of the tag so a new
# release cannot silently change the runtime under us.
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from, so its contents never depend on whatever else is in the context.
COPY pyproject.toml ./
COPY app ./app

# The wheel (with app/emulator/assets and app/static as package data) is installed by the base image's pip
# into a venv that has no pip or setuptools of its own, so the final stage gets runtime packages only.
# Every dependency ships manylinux wheels, hence no compiler here either. The cache mount keeps pip's
# downloads out of the layers while still speeding up rebuilds.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install /wheels/*.whl


FROM python:3.11-slim-bookworm

# A fixed uid/gid so that volume ownership and Kubernetes' runAsUser/fsGroup can be set to match it.
# /data is where the default SQLite store lives; it is the only directory the gateway writes to (besides
# /tmp for uploads in transit).
RUN groupadd --system --gid 10001 falgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin falgate \
    && mkdir /data \
    && chown 10001:10001 /data

COPY --from=builder /opt/venv /opt/venv

# FALGATE_HOST=0.0.0.0: inside a container the gateway must listen beyond loopback to be reachable at all.
# FALGATE_TRUSTED_PROXIES stays at its default (127.0.0.1): X-Forwarded-* headers are believed only from
# the load balancer, whose address or CIDR the operator sets there (deploy/README.md).
# FAL_KEY is deliberately absent: it comes from the runtime environment or a secret, never from the image.
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FALGATE_HOST=0.0.0.0 \
    FALGATE_PORT=8000 \
    FALGATE_LOG_FORMAT=json \
    FALGATE_STORE_URL=sqlite:////data/falgate.db

# Settings also read a .env from the working directory: a root-owned, empty one means the process itself
# can never plant configuration for its next start.
WORKDIR /srv/falgate
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000

# Python's urllib because slim images have no curl. The empty ProxyHandler matters: urllib would otherwise
# send this loopback probe through an HTTP(S)_PROXY set for the gateway's outbound calls to fal.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/healthz' % os.environ.get('FALGATE_PORT', '8000'), timeout=4)"]

# uvicorn handles SIGTERM itself: it stops accepting, lets in-flight requests finish for up to
# FALGATE_SHUTDOWN_GRACE_SECONDS (20 s by default), then exits; orchestrators must wait longer than that.
STOPSIGNAL SIGTERM
CMD ["falgate", "serve"]
