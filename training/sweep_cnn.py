"""The reference sweep: both networks at learning rates 0.1, 0.01 and 0.001, then a markdown table.

Finished runs (a metrics.json present) are skipped and interrupted ones resumed, so the sweep can be
started again after a stop and picks up where it was.

    python -m training.sweep_cnn --data ../shared/data/intel48.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.scenes import DataError, load_scenes
from training.train_cnn import DEFAULT_DATA, Config, train

NETWORKS = ("bn-gap", "vanilla")
LEARNING_RATES = (0.01, 0.1, 0.001)


def sorted_runs(metrics: list[dict]) -> list[dict]:
    return sorted(metrics, key=lambda m: (m["config"]["network"], -m["config"]["lr"]))


def results_table(metrics: list[dict]) -> str:
    rows = [
        "| network | lr | best epoch | val acc | test acc | params | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in metrics:
        c = m["config"]
        rows.append(
            f"| {c['network']} | {c['lr']:g} | {m['best_epoch']}/{c['epochs']} | {m['val_acc']:.4f} "
            f"| {m['test_acc']:.4f} | {m['params']:,} | {m['train_seconds'] / 60:.1f} min |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS))
    parser.add_argument("--lrs", nargs="+", type=float, default=list(LEARNING_RATES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="runs/cnn")
    parser.add_argument("--results", default="results/cnn")
    args = parser.parse_args(argv)
    try:
        data = load_scenes(args.data)
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    results = Path(args.results)
    all_metrics = []
    for lr in args.lrs:
        for network in args.networks:
            config = Config(network=network, lr=lr, epochs=args.epochs, data=args.data, threads=args.threads)
            done = results / config.name / "metrics.json"
            if done.exists() and json.loads(done.read_text())["config"]["epochs"] == config.epochs:
                print(f"{config.name}: done, {done}")
                all_metrics.append(json.loads(done.read_text()))
                continue
            all_metrics.append(train(config, data, Path(args.runs) / config.name, results / config.name, True))
    table = results_table(sorted_runs(all_metrics))
    (results / "sweep.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
