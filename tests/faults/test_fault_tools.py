"""The fault suite's own tools do what they claim, so a scenario built on them can fail."""

from __future__ import annotations

import pytest
import redis

from tests.faults.private_redis import PrivateRedis
from tests.faults.tally import Tally


def test_private_redis_kill_freeze_and_restart(private_redis: PrivateRedis) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=0.5)
    assert client.ping()
    private_redis.freeze()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    private_redis.thaw()
    assert redis.Redis.from_url(private_redis.url, socket_timeout=2).ping()
    private_redis.kill()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(private_redis.url, socket_timeout=0.5).ping()
    private_redis.start()
    assert redis.Redis.from_url(private_redis.url, socket_timeout=2).ping()


def test_tally_counts_and_refuses_unknown_figures() -> None:
    tally = Tally()
    tally.record("webhooks", results_lost=0, double_deliveries=1)
    assert tally.undocumented_5xx([200, 500, 502, 503, 504, 507]) == 2
    assert "double deliveries 1" in tally.summary()
    with pytest.raises(ValueError):
        tally.record("webhooks", lost=1)
