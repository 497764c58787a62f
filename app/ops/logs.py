"""Log set-up: JSON lines for machines, plain lines in a terminal, secrets scrubbed on the way out.

A log call on the event loop only builds the record and puts it on a queue (`QueueHandler`); one writer
thread formats, scrubs and writes every line, in order, in batches (see `_Writer`). The writer is stopped,
so the queue is drained, by `stop_logging()` (the lifespan's end) and at interpreter exit.

Secrets are kept out of log calls in the first place (no header or URL with credentials is ever logged);
the scrubber is the second wall on every line of every logger, uvicorn's included: it replaces any
registered secret, and the value of any credential-like query parameter (`?access_token=`, `&key=`, ...).
Callers' keys cannot be registered (the process keeps only their digests), and uvicorn writes the
WebSocket handshake's URL, query string and all, to its log: the query pattern is what keeps them out.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from app.settings import Settings

# Replaced, never mutated: the writer thread iterates it while the loop may register another secret.
_SECRETS: frozenset[str] = frozenset()
_writer: _Writer | None = None

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
    global _SECRETS
    if value and len(value) >= 6:
        _SECRETS = _SECRETS | {value}


def scrub(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    if "=" in text:
        text = _QUERY_CREDENTIAL.sub(r"\1***", text)
    return text


class _JSONFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        # Most lines share their second with the one before: format the date part once per second.
        second = int(record.created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        try:
            text = orjson.dumps(entry, default=str).decode()  # a few times faster than json.dumps
        except orjson.JSONEncodeError:  # an integer past 64 bits, a lone surrogate: the stdlib writes those
            text = json.dumps(entry, default=str)
        return scrub(text)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {record.getMessage()}"
        return scrub(f"{line} {extra}" if extra else line)


class _EnqueueOnly(logging.handlers.QueueHandler):
    """Puts the record itself on the queue: the stock `prepare()` would format (and so call getMessage and
    json) on the caller's thread, which is the event loop. Formatting and scrubbing happen in the writer.
    Loggers log values, not live objects they go on mutating, so formatting a moment later reads the same."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def handle(self, record: logging.LogRecord) -> bool:
        # No filters on this handler and the queue is thread-safe: skip Handler.handle's lock.
        self.enqueue(record)
        return True


class _Writer:
    """The writer thread: what the stdlib's QueueListener does, in batches. It waits for a record, lets
    `_LINGER` seconds of records gather, then formats them all and writes them with one call. One record
    at a time (QueueListener) would take the GIL from the loop and give it back at every line's write:
    thousands of hand-overs a second, each of which can keep the loop waiting; a batch is one."""

    _LINGER = 0.01

    def __init__(self, records: queue.SimpleQueue, handler: logging.StreamHandler) -> None:
        self.records = records
        self.handler = handler
        self._thread = threading.Thread(target=self._run, name="falgate-log-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.records.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self.records.get()]
            time.sleep(self._LINGER)
            while True:
                try:
                    batch.append(self.records.get_nowait())
                except queue.Empty:
                    break
            stopping = _STOP in batch
            self._write([record for record in batch if record is not _STOP])
            if stopping:
                return

    def _write(self, batch: list[logging.LogRecord]) -> None:
        lines = []
        for record in batch:
            try:
                lines.append(self.handler.format(record))
            except Exception:  # noqa: BLE001 - as logging.Handler.emit: report it, lose only this line
                self.handler.handleError(record)
        if lines:
            try:
                with self.handler.lock:
                    self.handler.stream.write("\n".join(lines) + "\n")
                    self.handler.flush()
            except Exception:  # noqa: BLE001 - a failed write (stderr closed) must not end the writer thread
                self.handler.handleError(batch[-1])


_STOP = object()


def stop_logging() -> None:
    """Write every queued line and stop the writer thread (idempotent). Later records are written by the
    caller's thread, so nothing logged during interpreter exit is lost either."""
    global _writer
    writer, _writer = _writer, None
    if writer is None:
        return
    # Writing directly first, then draining: a record another thread logs meanwhile cannot land on a queue
    # no one reads any more (at worst it is written ahead of the last queued lines).
    logging.getLogger().handlers[:] = [writer.handler]
    writer.stop()


class _RefusedHandshakeIsNotAnError(logging.Filter):
    """uvicorn logs every refused WebSocket handshake (our 401/403/429 denial response) at error level:
    "ASGI callable returned without completing handshake." Any anonymous client could fill the error
    log with it, so it is demoted to info; the refusal itself is logged by us at info."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.getMessage().startswith("ASGI callable returned without"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_REFUSED_HANDSHAKE_FILTER = _RefusedHandshakeIsNotAnError()


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    stop_logging()
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(_JSONFormatter() if use_json else _TextFormatter())
    # Per-record work no formatter here reads (logging HOWTO, "Optimization"): the caller's source line,
    # which walks the stack, and the thread, process and asyncio task names.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    global _writer
    _writer = _Writer(records, writer)
    root = logging.getLogger()
    root.handlers[:] = [_EnqueueOnly(records)]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO; signed storage URLs carry a token, so keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        # Also undoes uvicorn's own dictConfig (`uvicorn app.main:app`): its handlers would print unscrubbed.
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger("uvicorn.error").addFilter(_REFUSED_HANDSHAKE_FILTER)  # the same instance: added once
    # The access line is app.ops.access's (route template, never the raw URL). uvicorn writes its own only
    # when this logger has a handler somewhere, so leave it none, whichever way uvicorn was started.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False


# Registered after logging's own exit hook, so it runs first: the queue is drained before handlers close.
atexit.register(stop_logging)


def configure_process(settings: Settings) -> None:
    """The logging and secret registry of a gateway process: `falgate serve` and `app.main:app` share it."""
    configure_logging(settings.log_level, settings.log_format)
    register_secret(settings.upstream_key)
    for secret in (settings.webhook_secret, settings.metrics_token, settings.jwt_secret):
        if secret is not None:
            register_secret(secret.get_secret_value())
