from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.server import ROOT, Server

SHARED_NPZ = ROOT.parent / "shared" / "data" / "intel48.npz"

(ROOT / ".pytest_cache").mkdir(exist_ok=True)


@pytest.fixture(scope="session")
def intel48() -> Path:
    if not SHARED_NPZ.is_file():
        pytest.skip(f"needs the Intel scenes at {SHARED_NPZ} (the ../shared folder beside the checkout)")
    return SHARED_NPZ


@pytest.fixture(scope="session")
def intel48_data(intel48):
    from training.scenes import load_scenes

    return load_scenes(intel48)


@pytest.fixture(scope="session")
def server():
    """The real service on the committed exports, for the whole session."""
    running = Server()
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


class Hardening:
    """What the hardening tests sent and saw, per test: requests by status, the cases tried, and the figures
    they report (soak, startup error lines, worst-case times). Printed at the end of the pytest run and written
    to .pytest_cache/hardening-summary.md."""

    SUMMARY = ROOT / ".pytest_cache" / "hardening-summary.md"

    def __init__(self) -> None:
        self.statuses: dict[str, Counter] = {}
        self.cases: Counter = Counter()
        self.figures: dict[str, list[str]] = {}
        self.lock = threading.Lock()  # tests send from several threads

    @staticmethod
    def test() -> str:
        """The running test's id, from pytest's own PYTEST_CURRENT_TEST: `tests/x.py::test_y[param]`."""
        return os.environ.get("PYTEST_CURRENT_TEST", "outside a test").rsplit(" (", 1)[0]

    def record(self, *statuses: int | str) -> None:
        """One answer's status per request sent; a string such as 'refused' for a request with no answer."""
        with self.lock:
            self.statuses.setdefault(self.test(), Counter()).update(statuses)

    def case(self, count: int = 1) -> None:
        """Cases tried, where they are not one per request (a Hypothesis example may send none, or several)."""
        self.cases[self.test()] += count

    def figure(self, line: str) -> None:
        print(f"\n    {line}", end="")
        self.figures.setdefault(self.test(), []).append(line)

    def table(self) -> list[str]:
        rows = [
            "| test | cases | requests | 2xx | 4xx | 5xx | no answer | statuses |",
            "|---|---|---|---|---|---|---|---|",
        ]
        total: Counter = Counter()
        for test, counts in self.statuses.items():
            row = Counter("no answer" if isinstance(s, str) else f"{s // 100}xx" for s in counts.elements())
            row.update(cases=self.cases[test] or counts.total(), requests=counts.total())
            total.update(row)
            detail = ", ".join(f"{s}: {n:,}" for s, n in sorted(counts.items(), key=lambda item: str(item[0])))
            rows.append(self._row(test, row, detail))
        return [*rows, self._row("**all**", total, "")]

    @staticmethod
    def _row(name: str, counts: Counter, detail: str) -> str:
        columns = ("cases", "requests", "2xx", "4xx", "5xx", "no answer")
        return f"| {name} | " + " | ".join(f"{counts[c]:,}" for c in columns) + f" | {detail} |"

    def report(self) -> list[str]:
        if not self.statuses and not self.figures:
            return []
        lines = ["# Hardening summary", "", *self.table()]
        for test, figures in self.figures.items():
            lines += ["", f"## {test}", "", *(f"- {figure}" for figure in figures)]
        return lines


HARDENING = Hardening()


@pytest.fixture(scope="session")
def tally() -> Hardening:
    """The session's hardening record: `tally.record(status)`, `tally.case()`, `tally.figure(line)`."""
    return HARDENING


def pytest_terminal_summary(terminalreporter):
    lines = HARDENING.report()
    if lines:
        Hardening.SUMMARY.write_text("\n".join(lines) + "\n")
        terminalreporter.section("hardening summary")
        for line in lines:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"(written to {Hardening.SUMMARY.relative_to(ROOT)})")
