"""Serving speed through the real running servers, one at a time, each fresh and warmed up: requests/s and
latency percentiles at each concurrency, failures counted, warm-up excluded. Then an endurance run on one more
fresh SceneSpell: its resident memory after the warm-up and after 1,000, 10,000 and 30,000 requests, and
/classify at the top concurrency once more, to compare a server that has served them with a fresh one.
The last count lies past BentoML's traffic timeout (60 s) at these rates: its TimeoutMiddleware keeps a timer
per request, holding the request's context, for that long, so memory grows until then and levels off.

SceneSpell runs with the micro-batching of concurrent /classify requests on (the default) and off
(SCENESPELL_BATCHING=0); batching applies to /classify only, so /spell is measured once, and once more on a
server whose spellers have the classifiers' threads (SCENESPELL_SPELLER_THREADS, when it differs), to
measure that setting. The bare Starlette baseline (bench/bare_server.py) serves /classify only. Every server
of the tables has the same history (a warm-up), so that their figures compare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import load, servers
from bench.load import Request
from bench.stats import Spread

WARMUP_REQUESTS = 64
MEMORY_CONCURRENCY = 32


@dataclass(frozen=True)
class Settings:
    exports: Path
    threads: int
    speller_threads: int
    concurrencies: tuple[int, ...]
    warmup_seconds: float
    seconds: float
    repeats: int
    memory_counts: tuple[int, ...]  # RSS after this many requests since the warm-up


def summarise(runs: list[load.Result], cpu: dict) -> dict:
    """The repeats of one level: median (min-max) of requests/s and of each latency percentile."""
    return {
        **cpu,
        "concurrency": runs[0].concurrency,
        "requests/s": Spread.of([r.throughput for r in runs]),
        **{f"p{q}": Spread.of([r.percentile_ms(q) for r in runs]) for q in (50, 95, 99)},
        "requests": sum(len(r.latencies) + r.errors for r in runs),
        "failed": sum(r.failed for r in runs),
    }


def levels(server: servers.Server, requests: list[Request], settings: Settings, concurrencies=None) -> list[dict]:
    """Each concurrency level, with the CPU the server and the load generator (this process) used during it,
    as a percentage of one core (200% = both cores of a 2-core machine)."""
    results, client = [], psutil.Process()
    for concurrency in concurrencies or settings.concurrencies:
        start, server_start, client_start = time.perf_counter(), server.cpu_seconds(), sum(client.cpu_times()[:2])
        runs = load.level(
            server.url, requests, concurrency, settings.warmup_seconds, settings.seconds, settings.repeats
        )
        wall = time.perf_counter() - start
        cpu = {"server_cpu": 100 * (server.cpu_seconds() - server_start) / wall,
               "client_cpu": 100 * (sum(client.cpu_times()[:2]) - client_start) / wall}  # fmt: skip
        results.append(summarise(runs, cpu))
    return results


def memory(server: servers.Server, requests: list[Request], counts: tuple[int, ...]) -> list[dict]:
    """RSS after each count of requests (both endpoints in turn, 32 at a time), counted from now."""
    points, sent = [], 0
    for count in counts:
        result = load.send(server.url, requests, MEMORY_CONCURRENCY, count - sent)
        sent = count
        points.append({"requests": count, "rss_mib": server.rss_mib(), "failed": result.failed})
    return points


def environment(settings: Settings, batching: bool = True, speller_threads: int | None = None) -> dict[str, str]:
    return {"SCENESPELL_BATCHING": "1" if batching else "0", "SCENESPELL_THREADS": str(settings.threads),
            "SCENESPELL_SPELLER_THREADS": str(speller_threads or settings.speller_threads),
            "SCENESPELL_EXPORTS": str(settings.exports)}  # fmt: skip


def scenespell(settings: Settings, log_dir: Path, batching: bool, classify: list[Request], spell: list[Request],
               speller_threads: int | None = None, endpoints: tuple[str, ...] = ("classify", "spell")):  # fmt: skip
    mixed = [r for pair in zip(classify, spell) for r in pair]
    with servers.scenespell(log_dir, environment(settings, batching, speller_threads)) as server:
        ready = server.wait_ready()
        warmup = load.send(server.url, mixed, 8, WARMUP_REQUESTS)
        result = {"batching": batching, "ready_seconds": ready, "warmup_failed": warmup.failed,
                  "rss_warm_mib": server.rss_mib()}  # fmt: skip
        for endpoint, requests in (("classify", classify), ("spell", spell)):
            if endpoint in endpoints:
                result[endpoint] = levels(server, requests, settings)
    return result


def endurance(settings: Settings, log_dir: Path, classify: list[Request], spell: list[Request]) -> dict:
    """A fresh SceneSpell (defaults): RSS after the warm-up and after each count of requests, both endpoints in
    turn; then /classify at the top concurrency, as in the table of fresh servers."""
    mixed = [r for pair in zip(classify, spell) for r in pair]
    with servers.scenespell(log_dir, environment(settings)) as server:
        server.wait_ready()
        warmup = load.send(server.url, mixed, 8, WARMUP_REQUESTS)
        result = {"warmup_failed": warmup.failed, "rss_warm_mib": server.rss_mib()}
        result["memory"] = memory(server, mixed, settings.memory_counts)
        result["after"] = levels(server, classify, settings, [max(settings.concurrencies)])[0]
    return result


def bare(settings: Settings, log_dir: Path, classify: list[Request]) -> dict:
    with servers.bare(log_dir, settings.exports, settings.threads) as server:
        ready = server.wait_ready()
        warmup = load.send(server.url, classify, 8, WARMUP_REQUESTS)
        return {"ready_seconds": ready, "warmup_failed": warmup.failed, "rss_warm_mib": server.rss_mib(),
                "classify": levels(server, classify, settings)}  # fmt: skip


def run(settings: Settings, log_dir: Path, classify: list[Request], spell: list[Request]) -> dict:
    results = {
        "batching on": scenespell(settings, log_dir, True, classify, spell),
        "batching off": scenespell(settings, log_dir, False, classify, spell, endpoints=("classify",)),
    }
    if settings.speller_threads != settings.threads:  # /spell with the spellers on the classifiers' threads
        results["speller threads"] = scenespell(
            settings, log_dir, True, classify, spell, settings.threads, endpoints=("spell",)
        )
    results["bare"] = bare(settings, log_dir, classify)
    results["endurance"] = endurance(settings, log_dir, classify, spell)
    return results
