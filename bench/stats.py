"""A figure measured several times: its median, with the min and max, and how the tables print it; and the
timing loop of everything measured in-process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

SETTLE_SECONDS = 0.1


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def format(self, digits: int = 0) -> str:
        """`412 (398-420)`: the median, then the min and max of the repeats."""
        if self.low == self.high:
            return f"{self.median:,.{digits}f}"
        return f"{self.median:,.{digits}f} ({self.low:,.{digits}f}-{self.high:,.{digits}f})"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def latency_ms(rate: Spread) -> Spread:
    """Milliseconds per call from calls/s of one caller (one over the other: the fastest round is the min)."""
    return Spread(1000 / rate.median, 1000 / rate.high, 1000 / rate.low)


def alternate(engines: dict[str, Callable[[], object]], items: int, repeats: int, seconds: float) -> dict:
    """items/s of each engine's call: a warm-up call, then `repeats` timed rounds of at least `seconds`
    each, the engines taking turns round by round, so that a background load weighs on all alike. A pause
    before each round lets the thread pool of the previous engine fall asleep (OpenMP threads spin for a
    while after their work). Returns name -> Spread of items/s."""
    for run in engines.values():
        run()
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, run in engines.items():
            time.sleep(SETTLE_SECONDS)
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds or calls == 0:
                run()
                calls += 1
            rates[name].append(items * calls / elapsed)
    return {name: Spread.of(values) for name, values in rates.items()}
