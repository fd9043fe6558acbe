"""The table of our own scene networks (not the reference sweep) from results/cnn/*/metrics.json.

    python -m training.cnn_report     # prints it and writes results/cnn/ours.md

Beside each run's best-epoch accuracy it shows what training measured for the ablation: test-time flip
averaging, the last epoch's raw weights against their exponential moving average, and the accuracy of the
distillation teacher (one run, or the logit average of several). A second table
sets every other run against the baseline run (`resnet`): what its configuration changes, and by how
much that moved validation accuracy. A run fitted on the validation split too (--train-on-val) has its validation
accuracy marked "(seen)" and no change in it: only its test accuracy measures it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from training.sweep_cnn import NETWORKS as REFERENCE_NETWORKS
from training.train_cnn import Config, saw_validation


def val_cell(m: dict) -> str:
    """A run's validation accuracy, marked where the run was fitted on the validation split too."""
    return f"{m['val_acc']:.4f} (seen)" if saw_validation(m) else f"{m['val_acc']:.4f}"


def table(runs: list[dict]) -> str:
    rows = [
        "| run | params | best epoch | val acc | test acc | flip-averaged val / test | "
        "last epoch: EMA val / raw weights val | teacher val / test | time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in runs:
        flip = m.get("flip_averaging")
        flipped = f"{flip['val_acc']:.4f} / {flip['test_acc']:.4f}" if flip else "-"
        raw = m.get("raw_weights_last_epoch_val_acc")
        ema = f"{m['history'][-1]['val_acc']:.4f} / {raw:.4f}" if raw is not None else "-"
        teacher = m.get("teacher")
        taught = f"{teacher['val_acc']:.4f} / {teacher['test_acc']:.4f}" if teacher else "-"
        rows.append(
            f"| {m['name']} | {m['params']:,} | {m['best_epoch']}/{m['config']['epochs']} | {val_cell(m)} "
            f"| {m['test_acc']:.4f} | {flipped} | {ema} | {taught} | {m['train_seconds'] / 60:.0f} min |"
        )
    return "\n".join(rows) + "\n"


BASELINE = "resnet"
NOT_A_CHANGE = {"run_name", "threads", "data"}


def changes(config: dict, baseline: dict) -> str:
    """The settings of `config` that differ from `baseline`'s; a setting newer than a run has its default."""
    defaults = asdict(Config())
    config, baseline = defaults | config, defaults | baseline
    keys = [k for k in config if k not in NOT_A_CHANGE and config[k] != baseline[k]]
    return ", ".join(f"{k} {baseline[k]!r} -> {config[k]!r}" for k in keys) or "none (another seed)"


def ablation(runs: list[dict], baseline_name: str = BASELINE) -> str:
    """Each run against the baseline: the configuration it changes and its validation accuracy."""
    baseline = next((m for m in runs if m["name"] == baseline_name), None)
    if baseline is None:
        return ""
    rows = [
        f"| run | change from `{baseline_name}` | val acc | change in val acc | test acc | time |",
        "|---|---|---|---|---|---|",
    ]
    for m in runs:
        if m is baseline:
            continue
        moved = "-" if saw_validation(m) else f"{m['val_acc'] - baseline['val_acc']:+.4f}"
        rows.append(
            f"| {m['name']} | {changes(m['config'], baseline['config'])} | {val_cell(m)} "
            f"| {moved} | {m['test_acc']:.4f} | {m['train_seconds'] / 60:.0f} min |"
        )
    return "\n".join(rows) + "\n" if len(rows) > 2 else ""


def report(runs: list[dict]) -> str:
    text = table(runs)
    if ablated := ablation(runs):
        text += "\n" + ablated
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/cnn")
    args = parser.parse_args(argv)
    runs = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("*/metrics.json"))]
    ours = [m for m in runs if m["config"]["network"] not in REFERENCE_NETWORKS]
    if not ours:
        raise SystemExit(f"error: no run of our own networks in {args.results}; run `make train-resnet` first")
    text = report(ours)
    Path(args.results, "ours.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
