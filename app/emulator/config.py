"""Settings of the fal emulator, read from the environment by `EmulatorConfig.from_env`."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

ENV_PREFIX = "FALGATE_EMULATOR_"


@dataclass
class EmulatorConfig:
    # The only fal key the emulator accepts (`Authorization: Key <key>`). Kept out of repr so that
    # logging a config can never print it.
    key: str = field(repr=False)
    # Wall-clock length of every job: ~25% IN_QUEUE, the rest IN_PROGRESS.
    job_seconds: float = 4.0
    # Base URL written into response_url/status_url/upload_url/video urls; None = derive per request.
    public_url: str | None = None
    # Extra webhook delivery attempts after the first one fails (non-2xx or connection error).
    webhook_retries: int = 3
    webhook_retry_delay: float = 0.5
    webhook_timeout: float = 10.0
    # Interval of the `: ping` comment on the status stream (fal uses 15 s; tests shorten it).
    keepalive_seconds: float = 15.0
    # Finished jobs (and uploaded files) are forgotten after this long, as fal does after about an hour.
    job_ttl_seconds: float = 3600.0
    # The fake account every webhook claims to come from (X-Fal-Webhook-User-Id).
    user_id: str = "emulator-user-00000000"
    upload_token_seconds: float = 3600.0
    max_upload_bytes: int = 100 * 1024 * 1024
    # More fal OpenAPI documents for the model API (/api/v1/models), beside app/emulator/schemas.
    schema_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, announce: bool = True) -> EmulatorConfig:
        """Build a config from FAL_KEY and FALGATE_EMULATOR_* variables.

        Without FAL_KEY a random key is generated and, when `announce` is true, printed: it is a
        throwaway credential for a local stand-in, and the operator needs it to talk to the emulator.
        """
        env = os.environ if env is None else env
        key = env.get("FAL_KEY", "").strip()
        if not key:
            key = f"emulator-{secrets.token_hex(4)}:{secrets.token_hex(16)}"
            if announce:
                print(f"falgate emulator: FAL_KEY is not set; accepting the generated key {key}", file=sys.stderr)
        defaults = cls(key=key)
        return cls(
            key=key,
            job_seconds=_float(env, "JOB_SECONDS", defaults.job_seconds),
            public_url=(env.get(ENV_PREFIX + "PUBLIC_URL") or "").rstrip("/") or None,
            webhook_retries=int(_float(env, "WEBHOOK_RETRIES", defaults.webhook_retries)),
            webhook_retry_delay=_float(env, "WEBHOOK_RETRY_DELAY", defaults.webhook_retry_delay),
            webhook_timeout=_float(env, "WEBHOOK_TIMEOUT", defaults.webhook_timeout),
            keepalive_seconds=_float(env, "KEEPALIVE_SECONDS", defaults.keepalive_seconds),
            job_ttl_seconds=_float(env, "JOB_TTL_SECONDS", defaults.job_ttl_seconds),
            schema_dir=env.get(ENV_PREFIX + "SCHEMA_DIR") or None,
        )


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(ENV_PREFIX + name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from exc
