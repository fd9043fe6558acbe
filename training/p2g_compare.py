"""Every exported speller and the Phonetisaurus peer, side by side on the CMUdict test split.

    python -m training.p2g_compare     # prints the table, writes results/p2g/comparison.{md,json}

Our spellers run through ONNX Runtime exactly as the service runs them (exports/ and the shared decoding):
greedy, beam search (beam 5, its 5-best list) and nucleus sampling (5 samples, top_p 0.8). Words/s is the
whole test split decoded in batches on one ONNX Runtime thread, encoder included, counted in CPU seconds of
this process like the peer's (`make peer-p2g`, results/p2g/phonetisaurus/), so that other jobs on the
machine do not skew the comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from exports import EXPORTS_DIR, decoding
from exports.runtime import SpellerGraphs, speller_prefixes
from training.p2g_data import load_splits, pad, spellings_by_key
from training.p2g_metrics import error_rates, wer_at_k

BEAM, SAMPLES, TOP_P = 5, 5, 0.8


def decode_split(graphs: SpellerGraphs, pairs, method: str, batch: int) -> tuple[list[list[str]], float]:
    """Spellings of every pair (a list per pair: 1 for greedy, BEAM or SAMPLES otherwise) and the seconds taken."""
    meta = graphs.metadata
    index = {s: i for i, s in enumerate(meta["phonemes"])}
    bos, eos, cap = meta["special_tokens"]["bos"], meta["special_tokens"]["eos"], meta["max_output_length"]
    word = lambda tokens: "".join(meta["graphemes"][t] for t in tokens)  # noqa: E731
    results, seconds = [], 0.0
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        ids = pad([[index[s] for s in pair.phonemes] for pair in chunk]).numpy()
        began = time.process_time()
        state = graphs.initial_state(ids)
        if method == "greedy":
            sequences, _ = decoding.greedy(graphs.step, state, bos, eos, cap)
            found = [[s] for s in sequences]
        elif method == "beam":
            found, _ = decoding.beam_search(graphs.step, state, bos, eos, cap, BEAM, BEAM)
        else:
            found, _ = decoding.nucleus(graphs.step, state, bos, eos, cap, SAMPLES, TOP_P, seed=start)
        seconds += time.process_time() - began
        results += [[word(s) for s in options] for options in found]
    return results, seconds


def measure(graphs: SpellerGraphs, pairs, spellings, batch: int) -> list[dict]:
    words, keys = [p.word for p in pairs], [p.key for p in pairs]
    rows = []
    for method, label in (("greedy", "greedy"), ("beam", f"beam {BEAM}, {BEAM}-best"),
                          ("nucleus", f"nucleus top_p {TOP_P}, {SAMPLES} samples")):  # fmt: skip
        found, seconds = decode_split(graphs, pairs, method, batch)
        row = {"system": graphs.metadata["name"], "params": graphs.metadata["params"], "decoding": label}
        if method != "nucleus":  # the first of a nucleus list is one random draw, not a best guess
            row |= error_rates(words, [options[0] for options in found], keys, spellings)
        if method != "greedy":
            row |= {f"wer@{k}": wer_at_k(words, found, k) for k in (3, 5)}
        rows.append(row | {"words_per_second": len(pairs) / seconds})
        print(f"{row['system']} {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
    return rows


def peer_rows(results: Path) -> list[dict]:
    path = results / "phonetisaurus" / "metrics.json"
    if not path.exists():
        print(f"note: {path} missing; run `make peer-p2g` to add the Phonetisaurus peer")
        return []
    peer = json.loads(path.read_text())
    test = peer["test"]
    return [
        {"system": "phonetisaurus", "params": None, "decoding": "1-best", "cer": test["cer"], "wer": test["wer"],
         "homophone_wer": test["homophone_wer"], "words_per_second": peer["words_per_second"]},
        {"system": "phonetisaurus", "params": None, "decoding": "5-best", "wer@3": test["nbest_wer@3"],
         "wer@5": test["nbest_wer@5"]},
    ]  # fmt: skip


def table(rows: list[dict]) -> str:
    cell = lambda row, key: f"{row[key]:.4f}" if key in row else "-"  # noqa: E731
    lines = [
        "| system | params | decoding | CER | WER | homophone-aware WER | WER@3 | WER@5 | words/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        params = f"{row['params']:,}" if row.get("params") else "-"
        speed = f"{row['words_per_second']:,.0f}" if "words_per_second" in row else "-"
        lines.append(
            f"| {row['system']} | {params} | {row['decoding']} | {cell(row, 'cer')} | {cell(row, 'wer')} "
            f"| {cell(row, 'homophone_wer')} | {cell(row, 'wer@3')} | {cell(row, 'wer@5')} | {speed} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", default=str(EXPORTS_DIR))
    parser.add_argument("--results", default="results/p2g")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    splits = load_splits("cmudict")
    spellings = spellings_by_key(splits)
    rows = []
    for prefix in speller_prefixes(Path(args.exports)).values():
        rows += measure(SpellerGraphs(prefix, threads=1), splits["test"], spellings, args.batch)
    rows += peer_rows(Path(args.results))
    text = (
        f"Test split of CMUdict ({len(splits['test']):,} pairs); words/s on one core (CPU time), "
        f"batches of {args.batch}:\n\n" + table(rows)
    )
    Path(args.results, "comparison.md").write_text(text)
    Path(args.results, "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
