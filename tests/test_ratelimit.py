"""The in-process sliding-window counter against `limits`' own, hit for hit.

The embedded store counts windows in a dict (app/callers/ratelimit.py) instead of `limits`' memory storage, for
speed; callers must not be able to tell: same decisions, same remaining counts, same reset times.
"""

from __future__ import annotations

import math
import time
from unittest import mock

import pytest
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from app.callers.ratelimit import InProcessWindows


def _limits_answers(item_text: str, times: list[float]) -> list[tuple[bool, int, int]]:
    item = parse(item_text)
    storage = MemoryStorage()
    storage.timer.cancel()  # its expiry timer purges by the real clock, not the one this test steps through
    strategy = SlidingWindowCounterRateLimiter(storage)
    answers = []
    no_timer = mock.patch.object(MemoryStorage, "_MemoryStorage__schedule_expiry", lambda self: None)
    for now in times:
        with no_timer, mock.patch("time.time", return_value=now):
            allowed = strategy.hit(item, "alice", "read")
            reset_at, remaining = strategy.get_window_stats(item, "alice", "read")
        answers.append((allowed, remaining, math.ceil(reset_at - now)))
    storage.reset()
    return answers


def _our_answers(item_text: str, times: list[float]) -> list[tuple[bool, int, int]]:
    item = parse(item_text)
    windows = InProcessWindows()
    answers = []
    for now in times:
        allowed, reset_at, remaining = windows.hit("alice/read", item.amount, item.get_expiry(), now)
        answers.append((allowed, remaining, math.ceil(reset_at - now)))
    return answers


@pytest.mark.parametrize(
    ("item_text", "times"),
    [
        ("5/second", [1000.0 + i * 0.01 for i in range(12)]),  # a burst in one window
        ("5/second", [1000.5 + i * 0.1 for i in range(30)]),  # across three windows, weighted
        ("3/minute", [60_000.0 + i * 7.3 for i in range(40)]),  # steady, windows rolling over
        ("10/minute", [60_000.0 + 59.9, 60_000.0 + 60.1, *(60_000.0 + 60.2 + i for i in range(25))]),
        ("4/second", [1000.0, 1003.5, 1003.6, 1003.7, 1003.8, 1003.9, 1004.0, 1004.1]),  # after a long pause
    ],
)
def test_same_decisions_remaining_and_reset_as_limits(item_text: str, times: list[float]) -> None:
    assert _our_answers(item_text, times) == _limits_answers(item_text, times)


def test_forgetting_stale_windows_keeps_a_live_longer_one() -> None:
    windows = InProcessWindows()
    windows._MAX_KEYS = 3  # type: ignore[misc]  # small, so the cleanup runs
    assert windows.hit("alice/submit", 1, 3600, 7200.0)[0]  # an hourly limit, used up
    for i in range(4):  # per-second keys, old by the time the cleanup runs
        windows.hit(f"bob{i}/read", 5, 1, 7200.0)
    allowed, _, remaining = windows.hit("alice/submit", 1, 3600, 7205.0)
    assert (allowed, remaining) == (False, 0)


def test_new_callers_cost_o1_and_the_map_has_a_hard_cap() -> None:
    # Anonymous mode keys windows by client address: a flood of new callers, all live at once, must
    # neither scan every window per request (it was O(keys): ~8 ms a request at 100,000) nor grow past the cap.
    windows = InProcessWindows()
    cap = windows._MAX_KEYS
    for i in range(cap):
        windows.hit(f"{i}/read", 10, 60, 600.0)
    started = time.perf_counter()
    for i in range(2000):
        windows.hit(f"new{i}/read", 10, 60, 600.5)
    per_hit = (time.perf_counter() - started) / 2000
    assert len(windows) <= cap
    assert per_hit < 0.0002, f"{per_hit * 1000:.3f} ms per new caller"
    # The newest callers are the ones kept, and stale windows go as new hits arrive.
    assert windows.hit("new1999/read", 1, 60, 600.6)[0] is False
    for i in range(2000):
        windows.hit(f"later{i}/read", 10, 60, 800.0)
    assert len(windows) < cap
