"""The SQLite store's checkpointer: moves the WAL into the database file off the store's call path.

SQLite's automatic checkpoint runs inside whichever COMMIT crosses its threshold and, with
synchronous=NORMAL, fsyncs the WAL and the database there: every store call queued behind that COMMIT
waited for the disk (bench/: ~8% of the gateway's core idle under a stream of submits, all of it gone
with automatic checkpoints off). So the store turns them off on its connection and this thread runs a
PASSIVE checkpoint on its own connection every `interval` seconds; PASSIVE never blocks a writer or a
reader, it only copies what no reader still needs.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("falgate.store")

CHECKPOINT_EVERY_SECONDS = 0.5


class Checkpointer:
    def __init__(self, path: str, busy_timeout_ms: int, interval: float = CHECKPOINT_EVERY_SECONDS) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="falgate-sqlite-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Checkpoint once more, then end the thread (waits for it)."""
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _serve(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None)  # its own: only this thread uses it
        try:
            db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            while not self._stopping.wait(self._interval):
                self._checkpoint(db)
            self._checkpoint(db)
        finally:
            db.close()

    @staticmethod
    def _checkpoint(db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            # The WAL keeps every commit until a later checkpoint succeeds: nothing is lost meanwhile.
            log.warning("sqlite checkpoint failed: %s", type(exc).__name__)
