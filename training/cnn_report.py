"""The table of our own scene networks (not the reference sweep) from results/cnn/*/metrics.json.

    python -m training.cnn_report     # prints it and writes results/cnn/ours.md

Beside each run's best-epoch accuracy it shows what training measured for the ablation: test-time flip
averaging, and the last epoch's raw weights against their exponential moving average.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.sweep_cnn import NETWORKS as REFERENCE_NETWORKS


def table(runs: list[dict]) -> str:
    rows = [
        "| run | params | best epoch | val acc | test acc | flip-averaged val / test | "
        "last epoch: EMA val / raw weights val | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in runs:
        flip = m.get("flip_averaging")
        flipped = f"{flip['val_acc']:.4f} / {flip['test_acc']:.4f}" if flip else "-"
        raw = m.get("raw_weights_last_epoch_val_acc")
        ema = f"{m['history'][-1]['val_acc']:.4f} / {raw:.4f}" if raw is not None else "-"
        rows.append(
            f"| {m['name']} | {m['params']:,} | {m['best_epoch']}/{m['config']['epochs']} | {m['val_acc']:.4f} "
            f"| {m['test_acc']:.4f} | {flipped} | {ema} | {m['train_seconds'] / 60:.0f} min |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/cnn")
    args = parser.parse_args(argv)
    runs = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("*/metrics.json"))]
    ours = [m for m in runs if m["config"]["network"] not in REFERENCE_NETWORKS]
    if not ours:
        raise SystemExit(f"error: no run of our own networks in {args.results}; run `make train-resnet` first")
    text = table(ours)
    Path(args.results, "ours.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
