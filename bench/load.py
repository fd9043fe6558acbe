"""A closed-loop HTTP load generator on asyncio and aiohttp: `concurrency` clients on keep-alive connections,
each sending its next request as soon as the previous one is answered, for a duration or a request count.

python -m bench.load http://127.0.0.1:3000 --image street.jpg --concurrency 1 8 32 --seconds 5 --repeats 3
python -m bench.load http://127.0.0.1:3000 --phonemes "K AE1 T" --concurrency 8 --count 1000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Request:
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Result:
    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of every answered request, seconds
    statuses: Counter = field(default_factory=Counter)
    errors: int = 0  # no answer: a connection error or a timeout

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        """Answers that are not 2xx, plus requests without an answer."""
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300) + self.errors

    def percentile_ms(self, q: float) -> float:
        return 1000 * float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
    )


async def load(
    client: aiohttp.ClientSession,
    url: str,
    requests: list[Request],
    concurrency: int,
    seconds: float | None = None,
    count: int | None = None,
) -> Result:
    """Requests in turn from `requests`, until `seconds` have passed or `count` have been sent."""
    result, picks = Result(concurrency), itertools.count()
    deadline = time.perf_counter() + seconds if seconds is not None else float("inf")

    async def one_client():
        for i in picks:
            if (count is not None and i >= count) or time.perf_counter() >= deadline:
                return
            request = requests[i % len(requests)]
            start = time.perf_counter()
            try:
                async with client.post(url + request.path, data=request.body, headers=request.headers) as response:
                    await response.read()
                result.latencies.append(time.perf_counter() - start)
                result.statuses[response.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                result.errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


async def _level(url, requests, concurrency, warmup_seconds, seconds, repeats) -> list[Result]:
    async with session(concurrency) as client:
        await load(client, url, requests, concurrency, seconds=warmup_seconds)  # warm-up, not counted
        return [await load(client, url, requests, concurrency, seconds=seconds) for _ in range(repeats)]


def level(url: str, requests: list[Request], concurrency: int, warmup_seconds: float, seconds: float, repeats: int):
    """One concurrency level: a warm-up, then `repeats` timed runs of `seconds` each."""
    return asyncio.run(_level(url, requests, concurrency, warmup_seconds, seconds, repeats))


async def _count(url, requests, concurrency, count) -> Result:
    async with session(concurrency) as client:
        return await load(client, url, requests, concurrency, count=count)


def send(url: str, requests: list[Request], concurrency: int, count: int) -> Result:
    """Exactly `count` requests."""
    return asyncio.run(_count(url, requests, concurrency, count))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:3000")
    body = parser.add_mutually_exclusive_group(required=True)
    body.add_argument("--image", type=Path, help="POST /classify with this image file")
    body.add_argument("--phonemes", help="POST /spell with these ARPAbet phonemes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0, help="per timed run")
    parser.add_argument("--count", type=int, help="send exactly this many requests per level instead")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per level, not counted")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.image:
        from bench.payloads import multipart_request

        requests = [multipart_request(args.image.name, args.image.read_bytes())]
    else:
        body = json.dumps({"phonemes": args.phonemes}).encode()
        requests = [Request("/spell", body, {"Content-Type": "application/json"})]
    for concurrency in args.concurrency:
        if args.count:
            runs = [send(args.url, requests, concurrency, args.count) for _ in range(args.repeats)]
        else:
            runs = level(args.url, requests, concurrency, args.warmup, args.seconds, args.repeats)
        for run in runs:
            print(f"concurrency {concurrency:3d}: {run.throughput:8.1f} req/s  p50 {run.percentile_ms(50):7.1f} ms  "
                  f"p95 {run.percentile_ms(95):7.1f} ms  p99 {run.percentile_ms(99):7.1f} ms  "
                  f"answers {dict(run.statuses)}  errors {run.errors}")  # fmt: skip


if __name__ == "__main__":
    main()
