"""The speller results table (markdown) from results/p2g/*/metrics.json of our models (not the peer's).

python -m training.p2g_report     # prints it and writes results/p2g/results.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(metrics: list[dict]) -> str:
    rows = [
        "| model | params | decoding | CER | WER | homophone-aware WER | WER@3 | WER@5 | best epoch | time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in metrics:
        t = m["test"]
        # ensembles (training.ensemble_p2g) and int8 copies (training.quantize_p2g) train nothing of their own
        epoch, time = "-", ""
        if "members" in m:
            time = "ensemble of " + " + ".join(m["members"])
        elif "quantized_from" in m:
            time = f"int8 copy of {m['quantized_from']}"
        else:
            epoch, time = f"{m['best_epoch']}/{m['config']['epochs']}", f"{m['train_seconds'] / 60:.0f} min"
        rows.append(
            f"| {m['name']} | {m['params']:,} | greedy | {t['cer']:.4f} | {t['wer']:.4f} | {t['homophone_wer']:.4f} "
            f"| - | - | {epoch} | {time} |"
        )
        rows.append(
            f"| {m['name']} | | nucleus (top_p 0.8) | | {t['wer@1']:.4f} | | {t['wer@3']:.4f} | {t['wer@5']:.4f} | | |"
        )
        if bare := m.get("test_without_stress"):  # a speller reading stress, given input without it
            rows.append(
                f"| {m['name']} | | greedy, input without stress digits | {bare['cer']:.4f} | {bare['wer']:.4f} "
                f"| {bare['homophone_wer']:.4f} | - | - | | |"
            )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/p2g")
    args = parser.parse_args(argv)
    paths = [p for p in sorted(Path(args.results).glob("*/metrics.json")) if "params" in json.loads(p.read_text())]
    if not paths:
        raise SystemExit(f"error: no {args.results}/*/metrics.json; run `make train-p2g` first")
    text = "Test split of CMUdict (" + ", ".join(p.parent.name for p in paths) + "):\n\n"
    text += table([json.loads(p.read_text()) for p in paths])
    Path(args.results, "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
