"""Every setting of the gateway, in one pydantic-settings class: the public configuration contract.

Names are `FALGATE_*` except `FAL_KEY`, which keeps fal's own name so existing deployments carry over.
`.env.example` and the README's table document each one; keep the three in step.
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FAL_QUEUE_URL = "https://queue.fal.run"
FAL_RUN_URL = "https://fal.run"
FAL_REST_URL = "https://rest.fal.ai"
FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
FAL_API_URL = "https://api.fal.ai"

EMULATOR_MOUNT = "/_emulator"
MB = 1024 * 1024


def _check_base_url(value: str, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an absolute http(s) URL, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{name} must not carry a query, fragment or credentials")
    return value.rstrip("/")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    # hide_input_in_errors: a rejected FAL_KEY or API key list must never be quoted back in an error.
    model_config = SettingsConfigDict(env_prefix="FALGATE_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    fal_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("FAL_KEY", "FALGATE_FAL_KEY"))
    upstream: Literal["live", "emulator"] | None = None

    fal_queue_url: str = FAL_QUEUE_URL
    fal_run_url: str = FAL_RUN_URL
    fal_rest_url: str = FAL_REST_URL
    fal_jwks_url: str = FAL_JWKS_URL
    fal_api_url: str = FAL_API_URL  # fal's model API (/v1/models, /v1/models/pricing)
    # The fal account (X-Fal-Webhook-User-Id) whose webhooks count; unset: learned from the first verified
    # webhook of a request this gateway submitted.
    fal_user_id: str | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = None
    proxy_path: str = "/api/fal/proxy"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"
    # Addresses whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's forwarded_allow_ips).
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    shutdown_grace_seconds: float = Field(default=20.0, gt=0)

    max_body_bytes: int = Field(default=12 * MB, gt=0)
    max_image_bytes: int = Field(default=8 * MB, gt=0)
    max_prompt_length: int = Field(default=2500, gt=0)
    allow_unknown_fields: bool = False
    # Let image URLs name private/loopback/metadata hosts or carry user@ (fal fetches them with our key).
    allow_private_file_urls: bool = False
    allow_token_minting: bool = False
    prices: str | None = None  # JSON {"model slug": USD per billing unit}, merged over app.catalog.billing.DEFAULT_PRICES

    # --- models beyond the nine built in (app/catalog/registry.py) ---
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)  # endpoint ids, comma-separated
    model_schema_dir: str | None = None  # pinned fal OpenAPI documents, one per endpoint; they win over fetching
    model_cache_dir: str | None = None  # fetched documents and prices; unset = "models" beside the SQLite store
    models_strict: bool = True  # a deprecated or unloadable endpoint refuses start (false: left out, warned)
    price_rules: str | None = None  # JSON {"endpoint id": rule}: units per body (app/catalog/price_rules.py)

    upstream_connect_timeout: float = Field(default=5.0, gt=0)
    upstream_timeout: float = Field(default=30.0, gt=0)
    run_timeout: float = Field(default=900.0, gt=0)
    stream_idle_timeout: float = Field(default=60.0, gt=0)
    read_retries: int = Field(default=3, ge=0, le=10)
    upstream_max_connections: int = Field(default=200, gt=0)
    # Status polls of a request in flight share one upstream call; its answer is reused this long.
    status_max_age_ms: int = Field(default=250, ge=0)
    # A finished request's result is served from the store up to this size; larger ones come from fal.
    local_result_max_bytes: int = Field(default=4 * MB, ge=0)

    emulator_job_seconds: float = Field(default=4.0, ge=0)
    playground: bool | None = None  # the browser playground at `/`; unset = on in emulator mode only

    # --- callers: authentication ---
    auth: Literal["none", "api_key", "jwt"] = "none"
    allow_anonymous: bool = False
    api_keys: SecretStr | None = None  # "caller_id:key,caller_id:sha256:<hex>,..."
    jwt_secret: SecretStr | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: float = Field(default=30.0, ge=0)

    # --- callers: limits, budgets, store ---
    store_url: str = "sqlite:///./falgate.db"
    rate_limit_submit: str = "10/minute"
    rate_limit_read: str = "600/minute"
    max_inflight: int = Field(default=5, ge=1)
    inflight_ttl_seconds: float = Field(default=3600.0, gt=0)  # a slot nobody released frees itself
    budget_per_day: float | None = Field(default=None, ge=0)
    idempotency_ttl_seconds: float = Field(default=86400.0, gt=0)

    # --- the webhook relay ---
    webhook_secret: SecretStr | None = None  # "whsec_..." signs client webhooks (Standard Webhooks)
    webhook_allow_private: bool = False  # let client webhooks target private/loopback addresses (development)
    webhook_retry_scale: float = Field(default=1.0, gt=0)  # multiplies the >= 24 h retry schedule (tests shrink it)
    webhook_grace_seconds: float = Field(default=60.0, ge=0)  # after this, the poller asks fal about quiet requests
    poll_interval_seconds: float = Field(default=15.0, gt=0)
    # How long a replica's claim to watch one request's fal status stream lasts; renewed every third of it.
    watcher_lease_seconds: float = Field(default=30.0, gt=0)
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    ws_max_sockets_per_caller: int = Field(default=20, ge=1)  # open WebSockets per caller, per replica
    ws_max_subscriptions: int = Field(default=100, ge=1)  # requests one WebSocket may follow at once
    metrics_token: SecretStr | None = None  # when set, /metrics wants "Authorization: Bearer <token>"

    # --- push notifications (app/relay/push/) ---
    max_devices_per_caller: int = Field(default=10, ge=1, le=1000)
    push_default: bool = True  # submits notify the caller's devices unless they pass ?push=0
    push_title: str = "{model}: {outcome}"  # placeholders: {model}, {outcome}, {request_id}
    push_body: str = "Your request {request_id} is {outcome}."
    push_ca_file: str | None = None  # an extra CA bundle trusted for the push services (tests, private relays)
    fcm_url: str = "https://fcm.googleapis.com"
    fcm_credentials: str | None = None  # path of the Firebase service-account JSON file
    apns_url: str = "https://api.push.apple.com"  # sandbox: https://api.sandbox.push.apple.com
    apns_key_file: str | None = None  # the .p8 signing key from Apple
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = None  # the app's bundle id
    vapid_private_key: SecretStr | None = None  # PEM, inline or a file path (`falgate push vapid-keys`)
    vapid_subject: str | None = None  # "mailto:..." or "https://..."

    @field_validator("push_title", "push_body")
    @classmethod
    def _valid_push_template(cls, value: str, info) -> str:
        try:
            value.format(model="m", outcome="o", request_id="r")
        except (KeyError, IndexError, ValueError):
            raise ValueError(
                f"FALGATE_{info.field_name.upper()} may only use {{model}}, {{outcome}} and {{request_id}}"
            ) from None
        return value

    @field_validator("fcm_url", "apns_url")
    @classmethod
    def _valid_push_url(cls, value: str, info) -> str:
        return _check_base_url(value, "FALGATE_" + info.field_name.upper())

    @field_validator("vapid_subject")
    @classmethod
    def _valid_vapid_subject(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("mailto:", "https://")):
            raise ValueError("FALGATE_VAPID_SUBJECT must be a mailto: or https: URL")
        return value

    @field_validator("cors_origins", "trusted_proxies", "models", mode="before")
    @classmethod
    def _parse_origins(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("models")
    @classmethod
    def _valid_models(cls, value: list[str]) -> list[str]:
        for endpoint_id in value:
            if "*" in endpoint_id:
                raise ValueError("FALGATE_MODELS is an allowlist: name each endpoint id, '*' is not allowed")
            if "/" not in endpoint_id or "//" in endpoint_id or endpoint_id.startswith("/") or " " in endpoint_id:
                raise ValueError(f"FALGATE_MODELS: {endpoint_id!r} is not a fal endpoint id like owner/app/path")
        return list(dict.fromkeys(value))

    @field_validator("price_rules")
    @classmethod
    def _valid_price_rules(cls, value: str | None) -> str | None:
        from app.catalog.price_rules import parse_price_rules

        parse_price_rules(value)
        return value

    @field_validator("fal_queue_url", "fal_run_url", "fal_rest_url", "fal_jwks_url", "fal_api_url", "public_url")
    @classmethod
    def _valid_url(cls, value: str | None, info) -> str | None:
        return None if value is None else _check_base_url(value, "FALGATE_" + info.field_name.upper())

    @field_validator("proxy_path")
    @classmethod
    def _valid_proxy_path(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError("FALGATE_PROXY_PATH must start with '/' and not end with one, e.g. /api/fal/proxy")
        return value

    @field_validator("jwt_jwks_url")
    @classmethod
    def _valid_jwks(cls, value: str | None) -> str | None:
        return None if value is None else _check_base_url(value, "FALGATE_JWT_JWKS_URL")

    @field_validator("webhook_secret")
    @classmethod
    def _valid_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        from app.relay.client_webhooks import check_secret

        if value is not None:
            check_secret(value.get_secret_value())
        return value

    @field_validator("store_url")
    @classmethod
    def _valid_store(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "redis://", "rediss://")):
            raise ValueError("FALGATE_STORE_URL must be sqlite:///path or redis://host:port/db")
        return value

    @field_validator("rate_limit_submit", "rate_limit_read")
    @classmethod
    def _valid_rate(cls, value: str, info) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError:
            raise ValueError(f"FALGATE_{info.field_name.upper()} must look like 10/minute, got {value!r}") from None
        return value

    @field_validator("prices")
    @classmethod
    def _valid_prices(cls, value: str | None) -> str | None:
        from app.catalog.billing import parse_price_table

        parse_price_table(value)
        return value

    @field_validator("api_keys")
    @classmethod
    def _valid_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        from app.callers.api_keys import ApiKeyTable

        if value is not None:
            ApiKeyTable.parse(value.get_secret_value())  # its errors name entries by position, never by content
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.auth == "api_key" and not self.api_keys:
            raise ValueError("FALGATE_AUTH=api_key needs FALGATE_API_KEYS (create one with: falgate keys new CALLER_ID)")
        if self.auth == "jwt" and not (self.jwt_secret or self.jwt_jwks_url):
            raise ValueError("FALGATE_AUTH=jwt needs FALGATE_JWT_SECRET (HS256) or FALGATE_JWT_JWKS_URL (RS256/ES256)")
        return self

    @model_validator(mode="after")
    def _resolve_upstream(self) -> Settings:
        if self.upstream is None:
            self.upstream = "live" if self.fal_key else "emulator"
        if self.upstream == "live" and not self.fal_key:
            raise ValueError("FALGATE_UPSTREAM=live needs FAL_KEY (or unset both to run against the built-in emulator)")
        if self.fal_key is not None and not self.fal_key.get_secret_value().strip():
            raise ValueError("FAL_KEY is set but empty")
        if self.upstream == "live" and self.public_url is None:
            # fal would be told to post its webhooks to http://HOST:PORT/..., which it cannot reach: results
            # would arrive only by polling, and every rewritten URL would point callers at a private address.
            # The embedded emulator posts over loopback, so emulator mode keeps the HOST:PORT default.
            raise ValueError(
                "live mode needs FALGATE_PUBLIC_URL, the URL callers and fal reach this gateway at "
                "(fal posts its webhooks to FALGATE_PUBLIC_URL/v1/fal/webhook), e.g. https://falgate.example.com"
            )
        if self.upstream == "live" and self.auth == "none" and not self.allow_anonymous:
            raise ValueError(
                "live mode with FALGATE_AUTH=none would let anyone spend the key: "
                "set FALGATE_AUTH=api_key or jwt, or FALGATE_ALLOW_ANONYMOUS=true to accept that"
            )
        return self

    @property
    def trusted_proxies_csv(self) -> str:
        return ",".join(self.trusted_proxies)

    @property
    def models_cache_path(self) -> str:
        """FALGATE_MODEL_CACHE_DIR, or a "models" folder beside the SQLite store (the working directory for Redis)."""
        if self.model_cache_dir:
            return self.model_cache_dir
        if self.store_url.startswith("sqlite:///"):
            store = self.store_url.removeprefix("sqlite:///")
            return os.path.join(os.path.dirname(store) or ".", "models")
        return "models"

    @property
    def emulated(self) -> bool:
        return self.upstream == "emulator"

    @property
    def fal_webhook_url(self) -> str:
        """Where fal sends its webhooks: our own receiver."""
        return f"{self.gateway_url}/v1/fal/webhook"

    @property
    def gateway_url(self) -> str:
        """The base URL callers reach us at: rewritten fal URLs and our webhook receiver hang off it."""
        return self.public_url or f"http://{_url_host(self.host)}:{self.port}"

    @cached_property
    def upstream_key(self) -> str:
        """The key sent to fal. In emulator mode without a key, a random one the embedded emulator accepts."""
        if self.fal_key is not None:
            return self.fal_key.get_secret_value()
        return "emulator:" + secrets.token_hex(16)

    def use_embedded_emulator(self) -> None:
        """Point every upstream base at the emulator mounted in this process, reached over loopback HTTP."""
        base = f"http://{_loopback(self.host)}:{self.port}{EMULATOR_MOUNT}"
        self.fal_queue_url = f"{base}/queue"
        self.fal_run_url = f"{base}/run"
        self.fal_rest_url = f"{base}/rest"
        self.fal_jwks_url = f"{base}/rest/.well-known/jwks.json"


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else _url_host(host)
