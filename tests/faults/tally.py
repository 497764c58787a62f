"""What the fault suite counts across its scenarios, printed as one summary line at the end of the run.

Each scenario records what it observed (not what it expected): how many results never reached the store or
a sink, how many were delivered twice, how many refunds were wrong, and how many 5xx answers other than the
documented 502/503/504 it saw. The scenario also asserts its own counts are zero; the summary is for
operators reading CI output.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

COUNTS = ("results_lost", "double_deliveries", "wrong_refunds", "undocumented_5xx")
DOCUMENTED_5XX = frozenset({502, 503, 504})


@dataclass
class Tally:
    scenarios: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)

    def record(self, family: str, **observed: int) -> None:
        unknown = set(observed) - set(COUNTS)
        if unknown:
            raise ValueError(f"unknown fault counts: {sorted(unknown)}")
        self.scenarios[family] += 1
        for name, value in observed.items():
            self.counts[name] += value

    def undocumented_5xx(self, statuses: list[int]) -> int:
        return sum(1 for status in statuses if status >= 500 and status not in DOCUMENTED_5XX)

    def summary(self) -> str:
        families = ", ".join(f"{name} {n}" for name, n in sorted(self.scenarios.items())) or "none"
        figures = ", ".join(f"{name.replace('_', ' ')} {self.counts[name]}" for name in COUNTS)
        return f"fault suite: {sum(self.scenarios.values())} scenarios ({families}); {figures}"


TALLY = Tally()
