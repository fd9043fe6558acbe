"""How busy the machine was with other work during the run: CPU time used by every process outside the
benchmark (the system's busy time minus this process's and the servers' it started), as a share of one
core. PyTorch's OpenMP threads in particular slow down by orders of magnitude when other
processes use the cores, so a figure far from 0% marks a run whose speeds do not describe the machine.
"""

from __future__ import annotations

import time

import psutil

from bench import servers

NOT_BUSY = ("idle", "iowait", "guest", "guest_nice")  # guest time is counted in user time already


def snapshot() -> tuple[float, float, float]:
    """(wall seconds, busy CPU seconds of the machine, CPU seconds of this process and of the servers stopped)."""
    machine = psutil.cpu_times()
    busy = sum(value for name, value in machine._asdict().items() if name not in NOT_BUSY)
    own = psutil.Process().cpu_times()
    return time.perf_counter(), busy, own.user + own.system + servers.stopped_cpu_seconds


def other_cpu_percent(start: tuple[float, float, float]) -> float:
    """Average CPU used by other processes since `start`, in % of one core (200% = both cores of 2)."""
    end = snapshot()
    wall, busy, own = (b - a for a, b in zip(start, end))
    return max(0.0, 100 * (busy - own) / wall)
