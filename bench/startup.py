"""Startup: seconds from `make serve` to the first 200 of GET /readyz, the environment present.

The serving environment is brought up to date once first, untimed (`make <venv>/.serving`), so that the
timed runs measure starting the server, not installing it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench import servers
from bench.stats import Spread


def run(log_dir: Path, env: dict[str, str], samples: int) -> Spread:
    stamp = Path(os.path.relpath(sys.prefix, servers.ROOT)) / ".serving"
    subprocess.run(["make", "--no-print-directory", "-s", str(stamp)], cwd=servers.ROOT, check=False,
                   capture_output=True)  # fmt: skip
    seconds = []
    for _ in range(samples):
        with servers.make_serve(log_dir, env) as server:
            seconds.append(server.wait_ready())
    return Spread.of(seconds)
