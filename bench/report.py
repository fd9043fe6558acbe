"""The markdown of bench/results.md: the machine and the date, the targets, then one table per measurement."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib import metadata

import psutil

from bench.stats import latency_ms, ratio

PACKAGES = ("onnxruntime", "torch", "bentoml", "starlette", "uvicorn", "aiohttp", "numpy")
MIN_BARE_RATIO = 0.8  # targets of issue #8
MIN_ORT_SPEEDUP = 4.0
MAX_MEMORY_GROWTH = 0.10


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cpuinfo(field: str) -> str | None:
    """The value of `field` for the first processor in /proc/cpuinfo (None where there is none)."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith(field)), None)
    except OSError:
        return None


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


# the vector extensions that set the speed of the convolutions and of bfloat16 here (hosts of one name differ)
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def machine(threads: int, speller_threads: int) -> dict:
    flags = set((cpuinfo("flags") or "").split())
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{cpu_model()}, {os.cpu_count()} cores",
        "vector extensions": ", ".join(flag for flag in VECTOR_FLAGS if flag in flags)
        or "none of " + ", ".join(VECTOR_FLAGS),
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "system": platform.platform(),
        "Python": platform.python_version(),
        "packages": ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES),
        "threads": f"{threads} per classifier, {speller_threads} per speller (ONNX Runtime intra-op threads per "
        "model, SCENESPELL_THREADS and SCENESPELL_SPELLER_THREADS; torch.set_num_threads)",
    }


def x(value: float) -> str:
    return f"{value:.2f}x"


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def by_concurrency(levels: list[dict], concurrency: int) -> dict:
    return next(level for level in levels if level["concurrency"] == concurrency)


def failures(serving: dict) -> int:
    """Failed requests of every server: warm-ups, memory runs and timed runs."""
    total = 0
    for server in serving.values():
        total += server["warmup_failed"] + sum(point["failed"] for point in server.get("memory", []))
        total += sum(level["failed"] for key in ("classify", "spell") for level in server.get(key, []))
        total += server["after"]["failed"] if "after" in server else 0
    return total


def targets(results: dict) -> str:
    models, serving = results["models"], results["serving"]
    default = results["default_classifier"]
    batch1 = next(r for r in models["classifiers"] if r["model"] == default and r["batch"] == 1)
    speedup = ratio(batch1["ort"].median, batch1["torch"].median)
    top = max(level["concurrency"] for level in serving["bare"]["classify"])
    ours, bare = (by_concurrency(serving[s]["classify"], top) for s in ("batching on", "bare"))
    versus = ratio(ours["requests/s"].median, bare["requests/s"].median)
    failed = failures(serving)
    points = serving["endurance"]["memory"][:2]  # the target's span; a later point shows where growth stops
    growth = ratio(points[-1]["rss_mib"] - points[0]["rss_mib"], points[0]["rss_mib"])
    rows = [
        [f"ONNX Runtime >= {MIN_ORT_SPEEDUP:g}x PyTorch eager, served CNN `{default}`, batch 1",
         x(speedup), verdict(speedup >= MIN_ORT_SPEEDUP)],
        [f"SceneSpell >= {MIN_BARE_RATIO:g}x bare Starlette req/s, `/classify`, concurrency {top}, no errors",
         f"{x(versus)}; {failed} requests failed in all", verdict(versus >= MIN_BARE_RATIO and failed == 0)],
        [f"server memory growth <= {MAX_MEMORY_GROWTH:.0%} from {points[0]['requests']:,} to "
         f"{points[-1]['requests']:,} requests", f"{growth:+.1%}", verdict(growth <= MAX_MEMORY_GROWTH)],
    ]  # fmt: skip
    return table(["target", "measured", "result"], rows)


def classifiers(rows: list[dict]) -> str:
    out = []
    for r in rows:
        name = r["model"] if r["same_size"] else f"{r['model']} (*)"
        out.append([name, f"{r['params']:,}", r["batch"], r["ort"].format(), r["torch"].format(),
                    x(ratio(r["ort"].median, r["torch"].median))])  # fmt: skip
    headers = ["network", "params", "batch", "ONNX Runtime images/s", "PyTorch eager images/s", "ORT / PyTorch"]
    return table(headers, out)


def spellers(rows: list[dict]) -> str:
    out = []
    for r in rows:
        name = r["model"] if r["same_size"] else f"{r['model']} (*)"
        torch = [r["torch"].format(), x(ratio(r["ort"].median, r["torch"].median))] if r["torch"] else ["-", "-"]
        out.append([name, f"{r['params']:,}", r["mode"], r["words"], f"{r['letters']:.1f}", r["ort"].format(),
                    *torch])  # fmt: skip
    headers = ["speller", "params", "decoding", "words", "letters/spelling", "ONNX Runtime words/s",
               "PyTorch eager words/s", "ORT / PyTorch"]  # fmt: skip
    return table(headers, out)


def latencies(models: dict) -> str:
    rows = [["classifier", r["model"], f"{r['params']:,}", "one 48x48 image", latency_ms(r["ort"]).format(2)]
            for r in models["classifiers"] if r["batch"] == 1]  # fmt: skip
    rows += [["speller", r["model"], f"{r['params']:,}", f"one word, greedy ({r['letters']:.1f} letters)",
              latency_ms(r["ort"]).format(2)]
             for r in models["spellers"] if r["mode"] == "greedy, batch 1"]  # fmt: skip
    return table(["kind", "model", "params", "call", "ONNX Runtime ms, batch 1"], rows)


def servers(threads: int) -> dict[str, str]:
    """The label of each server of the serving table, by its key in the results."""
    return {"batching on": "SceneSpell", "batching off": "SceneSpell, SCENESPELL_BATCHING=0",
            "speller threads": f"SceneSpell, SCENESPELL_SPELLER_THREADS={threads}",
            "bare": "bare Starlette"}  # fmt: skip


def serving(results: dict, threads: int) -> str:
    rows = []
    for endpoint in ("classify", "spell"):
        for key, label in servers(threads).items():
            for level in results.get(key, {}).get(endpoint, []):
                rows.append([f"`/{endpoint}`", label, level["concurrency"], level["requests/s"].format(),
                             *(level[p].format(1) for p in ("p50", "p95", "p99")),
                             f"{level['failed']} / {level['requests']:,}",
                             f"{level['server_cpu']:.0f}% / {level['client_cpu']:.0f}%"])  # fmt: skip
    headers = ["endpoint", "server", "concurrency", "requests/s", "p50 ms", "p95 ms", "p99 ms", "failed / sent",
               "CPU server / load generator"]  # fmt: skip
    return table(headers, rows)


def ratios(results: dict, direct: dict, threads: int, speller_threads: int) -> str:
    on, off, bare = (results[k]["classify"] for k in ("batching on", "batching off", "bare"))
    rows = []
    for c in [level["concurrency"] for level in on]:
        ours = by_concurrency(on, c)["requests/s"].median
        rows.append([f"`/classify` req/s at concurrency {c}: SceneSpell / bare Starlette",
                     x(ratio(ours, by_concurrency(bare, c)["requests/s"].median))])  # fmt: skip
        rows.append([f"`/classify` req/s at concurrency {c}: batching on / off",
                     x(ratio(ours, by_concurrency(off, c)["requests/s"].median))])  # fmt: skip
    if "speller threads" in results:
        for level in results["batching on"]["spell"]:
            other = by_concurrency(results["speller threads"]["spell"], level["concurrency"])
            rows.append([f"`/spell` req/s at concurrency {level['concurrency']}: spellers on {speller_threads} / "
                         f"{threads} threads",
                         x(ratio(level["requests/s"].median, other["requests/s"].median))])  # fmt: skip
    for endpoint in ("classify", "spell"):
        levels, alone = results["batching on"][endpoint], direct[endpoint]
        p50, direct_p50 = by_concurrency(levels, 1)["p50"].median, alone["p50"].median
        best, direct_rate = max(level["requests/s"].median for level in levels), alone["requests/s"].median
        rows.append([f"`/{endpoint}` serving overhead: SceneSpell p50 at concurrency 1 / direct call, median "
                     f"({p50:.2f} ms / {direct_p50:.2f} ms)", x(ratio(p50, direct_p50))])  # fmt: skip
        rows.append([f"`/{endpoint}` best SceneSpell req/s / direct calls per second, one caller "
                     f"({best:,.0f} / {direct_rate:,.0f})", x(ratio(best, direct_rate))])  # fmt: skip
    return table(["ratio", "value"], rows)


def memory(results: dict) -> str:
    run = results["endurance"]
    rows = [["SceneSpell", "after warm-up", f"{run['rss_warm_mib']:.0f}"]]
    rows += [["SceneSpell", f"after {p['requests']:,} requests past the warm-up", f"{p['rss_mib']:.0f}"]
             for p in run["memory"]]  # fmt: skip
    rows.append(["bare Starlette", "after warm-up", f"{results['bare']['rss_warm_mib']:.0f}"])
    return table(["server", "when", "RSS MiB (process tree)"], rows)


def endurance(results: dict) -> str:
    after = results["endurance"]["after"]
    fresh = by_concurrency(results["batching on"]["classify"], after["concurrency"])
    served = results["endurance"]["memory"][-1]["requests"]
    rows = [[f"`/classify`, SceneSpell, concurrency {after['concurrency']}", label, level["requests/s"].format(),
             *(level[p].format(1) for p in ("p50", "p95", "p99")), f"{level['failed']} / {level['requests']:,}"]
            for label, level in (("fresh, warmed up (the table above)", fresh),
                                 (f"after {served:,} requests", after))]  # fmt: skip
    headers = ["endpoint", "server state", "requests/s", "p50 ms", "p95 ms", "p99 ms", "failed / sent"]
    return table(headers, rows)


def document(results: dict) -> str:
    m, (load_start, load_end) = results["machine"], results["load"]
    sections = [
        "# SceneSpell benchmarks (`make bench`)",
        f"Measured on {m['date']} by `{results['command']}` in {results['total_seconds'] / 60:.1f} min ("
        + ", ".join(f"{name} {s:.0f} s" for name, s in results["section_seconds"].items())
        + "). Each figure: the median of the repeats, with (min-max).",
        table(["machine", ""], [[k, v] for k, v in m.items()]
              + [["load average (1 min)", f"{load_start:.2f} at the start, {load_end:.2f} at the end"],
                 ["other processes", f"{results['other_cpu']:.0f}% of one core on average during the run "
                  "(0% on an idle machine; see bench/background.py)"]]),
        "## Targets",
        targets(results),
        f"## Classifiers: ONNX Runtime vs PyTorch eager (images/s, {results['threads']} threads)",
        classifiers(results["models"]["classifiers"]),
        f"## Spellers: ONNX Runtime vs PyTorch eager (words/s, {results['speller_threads']} threads)",
        spellers(results["models"]["spellers"]),
        "## ONNX Runtime latency at batch 1, every served model",
        latencies(results["models"]),
        "## Serving through the running server (closed loop, keep-alive, warm-up excluded)",
        serving(results["serving"], results["threads"]),
        "## Ratios",
        ratios(results["serving"], results["direct"], results["threads"], results["speller_threads"]),
        "## Memory and endurance",
        memory(results["serving"]),
        endurance(results["serving"]),
        "## Startup",
        table(["from", "to", "seconds"],
              [["`make serve` (environment present)", "`GET /readyz` 200", results["startup"].format(2)]]),
    ]  # fmt: skip
    if any(r["torch"] is None for r in results["models"]["spellers"]):
        sections.append("A speller made from other exports (an ensemble, an int8 copy) has no PyTorch twin: "
                        "ONNX Runtime alone (-).")  # fmt: skip
    if any(not r["same_size"] for r in results["models"]["classifiers"] + results["models"]["spellers"]):
        sections.append("(*) the PyTorch twin's parameter count differs from the export's: its architecture is not "
                         "the exported one, so its figure is not comparable.")  # fmt: skip
    return "\n\n".join(sections) + "\n"
