"""A Redis server of the test's own on a free port, which a fault test may kill, freeze or restart.

The shared Redis at 127.0.0.1:6379 serves every other suite (and other test runs on the machine), so a
fault test never touches it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import redis

from tests.servers import free_port


class PrivateRedis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make test` as root once, or apt-get install redis-server")
        self._binary = binary
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="falgate-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self._dir]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"private redis on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: connections reset, nothing answers until `start()`; the data is gone (nothing on disk)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def freeze(self) -> None:
        """SIGSTOP: the port accepts connections but nothing is ever answered, as a hung server looks."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self._process is not None:
            self.thaw()
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
