"""`make bench`: model speed, serving speed and memory, startup time, in one run; prints the markdown tables
and writes them to bench/results.md with the machine and the date.

python -m bench.run                 # the full run, under 10 minutes on 2 cores
python -m bench.run --quick --output /tmp/results.md   # a tiny run of the same machinery (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path

from bench import background, direct, model_speed, payloads, report, serving_speed, startup
from bench.servers import ROOT
from exports import EXPORTS_DIR

FULL = {"model_repeats": 5, "model_seconds": 0.3, "words": 64, "warmup": 0.5, "seconds": 2.5, "repeats": 3,
        "memory_counts": (1000, 10000, 30000), "startup_samples": 3}  # fmt: skip
QUICK = {"model_repeats": 1, "model_seconds": 0.01, "words": 4, "warmup": 0.1, "seconds": 0.15, "repeats": 2,
         "memory_counts": (50, 150, 250), "startup_samples": 1}  # fmt: skip


def pronunciations(count: int) -> list[tuple[str, ...]]:
    """`count` CMUdict test-split pronunciations (with their stress digits), a fixed random sample."""
    from training.p2g_data import cmudict_splits

    return [pair.phonemes for pair in random.Random(0).sample(cmudict_splits()["test"], count)]


def default_classifier(exports: Path) -> str:
    from exports.metadata import from_session
    from exports.runtime import load_session

    return from_session(load_session(exports / "cnn.onnx"), "cnn.onnx")["name"]


@contextmanager
def section(name: str, seconds: dict):
    """Print the section's name, then how long it took; record that in `seconds`."""
    print(f"{name} ...", flush=True)
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start
    print(f"{name}: {seconds[name]:.0f} s", flush=True)


def plain(value):
    """JSON-ready: dataclasses (Spread) as dicts."""
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny run: few requests, short timings (for tests)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime and PyTorch threads (default 2)")
    parser.add_argument("--speller-threads", type=int, default=1,
                        help="the same for the spellers (default 1, the server's own default)")  # fmt: skip
    parser.add_argument("--exports", type=Path, default=Path(os.environ.get("SCENESPELL_EXPORTS") or EXPORTS_DIR))
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.md")
    parser.add_argument("--json", type=Path, help="also write the raw figures as JSON here")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    settings = QUICK if args.quick else FULL
    start, load_start, seconds, machine_start = time.perf_counter(), os.getloadavg()[0], {}, background.snapshot()

    import torch  # before any torch work: one inter-op thread, `--threads` intra-op threads

    torch.set_num_interop_threads(1)
    words = pronunciations(settings["words"])
    phonemes = [" ".join(p) for p in words]
    classify, spell = payloads.classify_requests(), payloads.spell_requests(words)
    jpegs = [payloads.scene_jpeg(i) for i in range(len(classify))]

    repeats, round_seconds = settings["model_repeats"], settings["model_seconds"]
    with section("model speed", seconds):
        models = model_speed.run(args.exports, words, args.threads, args.speller_threads, repeats, round_seconds)
    with section("direct calls", seconds):
        direct_rates = direct.run(
            args.exports, args.threads, args.speller_threads, jpegs, phonemes, repeats, round_seconds
        )
    serve_settings = serving_speed.Settings(
        args.exports, args.threads, args.speller_threads, (1, 8, 32), settings["warmup"], settings["seconds"],
        settings["repeats"], settings["memory_counts"],
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="scenespell-bench-") as logs:
        with section("serving", seconds):
            serving = serving_speed.run(serve_settings, Path(logs), classify, spell)
        with section("startup", seconds):
            env = serving_speed.environment(serve_settings)  # the defaults' server, as the serving tables start it
            startup_seconds = startup.run(Path(logs), env, settings["startup_samples"])
    results = {
        "command": "make bench" if os.environ.get("MAKELEVEL") else shlex.join(["python", "-m", "bench.run", *given]),
        "machine": report.machine(args.threads, args.speller_threads),
        "threads": args.threads,
        "speller_threads": args.speller_threads,
        "default_classifier": default_classifier(args.exports),
        "models": models,
        "direct": direct_rates,
        "serving": serving,
        "startup": startup_seconds,
        "load": (load_start, os.getloadavg()[0]),
        "other_cpu": background.other_cpu_percent(machine_start),
        "total_seconds": time.perf_counter() - start,
        "section_seconds": seconds,
    }
    markdown = report.document(results)
    print(markdown)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown)
    if args.json:
        args.json.write_text(json.dumps(plain(results), indent=1) + "\n")
    print(f"wrote {args.output}; total bench time {results['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
