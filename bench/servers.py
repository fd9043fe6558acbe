"""The servers under test, each its own process tree on a free port, logging to a file: SceneSpell by
`bentoml serve` (or by `make serve`, for the startup time) and the bare baseline by `python -m bench.bare_server`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).parent / "bentoml"
POLL_SECONDS = 0.05
stopped_cpu_seconds = 0.0  # CPU time of every server tree of this run, read just before stopping it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, command: list[str], port: int, log_dir: Path, env: dict[str, str] | None = None):
        self.name, self.port, self.url = name, port, f"http://127.0.0.1:{port}"
        self.log_path = log_dir / f"{name}-{port}.log"
        environment = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **(env or {})}
        with open(self.log_path, "w") as log:
            self.started = time.perf_counter()
            self.process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> float:
        """Seconds from the start of the command to the first 200 of GET /readyz (polled every 50 ms)."""
        while (elapsed := time.perf_counter() - self.started) < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"{self.name} not ready after {elapsed:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def tree(self) -> list[psutil.Process]:
        try:
            top = psutil.Process(self.process.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_mib(self) -> float:
        """Resident memory of the whole process tree (server and workers), MiB."""
        total = 0
        for process in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total / 2**20

    def cpu_seconds(self) -> float:
        """CPU time used so far by the whole process tree (user and system, every thread)."""
        total = 0.0
        for process in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to every process of the tree, by id; SIGKILL to what is left after `timeout`."""
        global stopped_cpu_seconds
        stopped_cpu_seconds += self.cpu_seconds()
        processes = self.tree()
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=timeout)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.process.wait(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def scenespell(log_dir: Path, env: dict[str, str]) -> Server:
    port = free_port()
    command = [str(BENTOML), "serve", "serving.service:SceneSpell", "--host", "127.0.0.1", "--port", str(port)]
    return Server("scenespell", command, port, log_dir, env)


def bare(log_dir: Path, exports: Path, threads: int) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "bench.bare_server", "--port", str(port), "--exports", str(exports),
               "--threads", str(threads)]  # fmt: skip
    return Server("bare", command, port, log_dir)


def make_serve(log_dir: Path, env: dict[str, str]) -> Server:
    port = free_port()
    return Server("make-serve", ["make", "--no-print-directory", "serve", f"PORT={port}"], port, log_dir, env)
