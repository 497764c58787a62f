"""Log set-up: JSON lines for machines, plain lines in a terminal, secrets scrubbed on the way out.

Secrets are kept out of log calls in the first place (no header or URL with credentials is ever logged);
the scrubber is the second wall on every line of every logger, uvicorn's included: it replaces any
registered secret, and the value of any credential-like query parameter (`?access_token=`, `&key=`, ...).
Callers' keys cannot be registered (the process keeps only their digests), and uvicorn writes the
WebSocket handshake's URL, query string and all, to its log: the query pattern is what keeps them out.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.settings import Settings

_SECRETS: set[str] = set()

# A query parameter whose name says it carries a credential (access_token, token, key, api_key, fal_key,
# auth, sig, password, ...): its value, up to the next separator, becomes ***. Matched after `?` or `&`
# (also JSON-escaped as \u0026), so a plain word such as "key=" in prose is left alone.
_QUERY_CREDENTIAL = re.compile(
    r"((?:[?&;]|\\u0026)[\w.\-\[\]%]*?(?:token|key|secret|auth|passw(?:or)?d|pwd|sig|signature|jwt|credential|session)"
    r"[\w.\-\[\]%]*=)[^&\s\"'#;<>\\]+",
    re.IGNORECASE,
)


def register_secret(value: str | None) -> None:
    """Never print this value: it is replaced by *** in every log line from now on."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    if "=" in text:
        text = _QUERY_CREDENTIAL.sub(r"\1***", text)
    return text


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return scrub(json.dumps(entry, default=str))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {record.getMessage()}"
        return scrub(f"{line} {extra}" if extra else line)


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONFormatter() if use_json else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; signed storage URLs carry a token, so keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        # Also undoes uvicorn's own dictConfig (`uvicorn app.main:app`): its handlers would print unscrubbed.
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(logging.NOTSET)
    # The access line is app.ops.access's (route template, never the raw URL). uvicorn writes its own only
    # when this logger has a handler somewhere, so leave it none, whichever way uvicorn was started.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False


def configure_process(settings: Settings) -> None:
    """The logging and secret registry of a gateway process: `falgate serve` and `app.main:app` share it."""
    configure_logging(settings.log_level, settings.log_format)
    register_secret(settings.upstream_key)
    for secret in (settings.webhook_secret, settings.metrics_token, settings.jwt_secret):
        if secret is not None:
            register_secret(secret.get_secret_value())
