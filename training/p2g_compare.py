"""Every exported speller and the Phonetisaurus peers, side by side on the CMUdict test split.

    python -m training.p2g_compare     # prints the table, writes results/p2g/comparison.{md,json}
    python -m training.p2g_compare --beam-widths attention-ensemble   # -> results/p2g/beam_width.{md,json}

Our spellers run through ONNX Runtime exactly as the service runs them (exports/ and the shared decoding):
greedy, beam search (beam 40, its 5-best list) and nucleus sampling (5 samples, top_p 0.8). Words/s is the
whole test split decoded in batches of words of similar length on one ONNX Runtime thread, encoder
included, counted in CPU seconds of the process decoding it. With --jobs N, N spellers are measured at once,
each in a process of its own (largest first): CPU seconds exclude waiting for a core, but spellers sharing
the machine's caches and memory bus run somewhat slower, so any contention counts against ours, never
against the peers, which are timed alone. The peers' quality comes from `make peer-p2g` and
`make peer-p2g-stress` (results/p2g/phonetisaurus{,-stress}/; the second reads stress digits, like our
spellers trained with --stress); their speed is timed again in this run, before and after ours (the faster
of the two is reported): this machine's speed varies from day to day, so only speeds of one run compare.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from exports import EXPORTS_DIR, decoding
from exports.runtime import SpellerGraphs, speller_prefixes
from training.p2g_data import load_splits, spellings_by_key
from training.p2g_metrics import error_rates, wer_at_k
from training.peer_phonetisaurus import decode as peer_decode
from training.peer_phonetisaurus import pronunciation, tool_environment

# The n-best lists come from a beam of BEAM hypotheses, a width chosen on the validation split
# (`make beam-p2g`, results/p2g/beam_width.md): wider beams find more of the right spellings; 40 scores best
# there (attention-ensemble WER@5 0.1625 against 0.1659 with 20) at half the speed of 20.
BEAM, N_BEST, SAMPLES, TOP_P = 40, 5, 5, 0.8
BEAM_WIDTHS = (5, 10, 20, 40)


def decode_split(
    graphs: SpellerGraphs, pairs, method: str, batch: int, beam: int = BEAM, by_length: bool = True
) -> tuple[list[list[str]], float]:
    """Spellings of every pair (a list per pair: 1 for greedy, N_BEST or SAMPLES otherwise) and the seconds
    taken. Words are decoded in batches of similar length, as a batch service would; with by_length False,
    in consecutive chunks as training evaluates them (each chunk's nucleus seed is its first row's index)."""
    meta = graphs.metadata
    bos, eos, cap = meta["special_tokens"]["bos"], meta["special_tokens"]["eos"], meta["max_output_length"]
    word = lambda tokens: "".join(meta["graphemes"][t] for t in tokens)  # noqa: E731
    results, seconds = [None] * len(pairs), 0.0
    chunks = (
        decoding.length_batches([len(pair.phonemes) for pair in pairs], batch)
        if by_length
        else [np.arange(start, min(start + batch, len(pairs))) for start in range(0, len(pairs), batch)]
    )
    for rows in chunks:
        ids = graphs.phoneme_ids([pairs[row].phonemes for row in rows])
        began = time.process_time()
        state = graphs.initial_state(ids)
        if method == "greedy":
            sequences, _ = decoding.greedy(graphs.step, state, bos, eos, cap)
            found = [[s] for s in sequences]
        elif method == "beam":
            found, _ = decoding.beam_search(graphs.step, state, bos, eos, cap, beam, N_BEST)
        else:
            found, _ = decoding.nucleus(graphs.step, state, bos, eos, cap, SAMPLES, TOP_P, seed=int(rows[0]))
        seconds += time.process_time() - began
        for row, options in zip(rows, found):
            results[row] = [word(s) for s in options]
    return results, seconds


def measure(graphs: SpellerGraphs, pairs, spellings, batch: int) -> list[dict]:
    words, keys = [p.word for p in pairs], [p.key for p in pairs]
    rows = []
    for method, label in (("greedy", "greedy"), ("beam", f"beam {BEAM}, {N_BEST}-best"),
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


EVALUATION_BATCH = 512  # the chunks of training's own evaluation (train_p2g.spell), so nucleus seeds match


def batch_free(meta: dict) -> bool:
    """Whether a speller spells a word the same whatever the other words of its batch, so that evaluation may
    batch words by length (1.3 to 1.8 times faster on one thread): float graphs do; an int8 copy quantizes its
    activations per batch, so its words are decoded in the chunks its metrics were computed in."""
    return "quantized_from" not in meta


def greedy_rates(graphs: SpellerGraphs, pairs, spellings) -> dict:
    found, _ = decode_split(graphs, pairs, "greedy", EVALUATION_BATCH, by_length=batch_free(graphs.metadata))
    return error_rates([p.word for p in pairs], [f[0] for f in found], [p.key for p in pairs], spellings)


def score(graphs: SpellerGraphs, splits, spellings) -> dict:
    """The metrics a trained speller's metadata carries: greedy rates on valid and test; on test also WER@k over
    5 nucleus samples (top_p 0.8), seeded as training seeds them. For exports made from exports (ensembles,
    int8 copies), which have no training run of their own."""
    test = splits["test"]
    samples, _ = decode_split(graphs, test, "nucleus", EVALUATION_BATCH, by_length=False)
    words = [p.word for p in test]
    at_k = {f"wer@{k}": wer_at_k(words, samples, k) for k in (1, 3, 5)}
    return {"valid": greedy_rates(graphs, splits["valid"], spellings),
            "test": greedy_rates(graphs, test, spellings) | at_k}  # fmt: skip


def without_stress_rates(graphs: SpellerGraphs, splits, spellings) -> dict:
    """For a speller reading stress digits, {"test_without_stress": its greedy rates on the test split given without
    them}, as training reports its own (results/p2g/results.md); {} for a speller that ignores them."""
    if not graphs.metadata["stress"]:
        return {}
    return {"test_without_stress": greedy_rates(graphs, [p.without_stress() for p in splits["test"]], spellings)}


def beam_widths(graphs: SpellerGraphs, pairs, batch: int) -> list[dict]:
    """WER@k of the n-best list and words/s for each beam width in BEAM_WIDTHS."""
    words, rows = [p.word for p in pairs], []
    for beam in BEAM_WIDTHS:
        found, seconds = decode_split(graphs, pairs, "beam", batch, beam)
        rows.append({"system": graphs.metadata["name"], "beam": beam, "wer@1": wer_at_k(words, found, 1),
                     "wer@3": wer_at_k(words, found, 3), "wer@5": wer_at_k(words, found, 5),
                     "words_per_second": len(pairs) / seconds})  # fmt: skip
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()))
    return rows


def beam_table(rows: list[dict]) -> str:
    lines = [f"| system | beam | WER@1 | WER@3 | WER@{N_BEST} | words/s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['system']} | {r['beam']} | {r['wer@1']:.4f} | {r['wer@3']:.4f} | {r['wer@5']:.4f} "
              f"| {r['words_per_second']:,.0f} |" for r in rows]  # fmt: skip
    return "\n".join(lines) + "\n"


# The peers, each beside the spellers that read the same input: `make peer-p2g` (pronunciations without
# stress digits) and `make peer-p2g-stress` (with them), as {name: reads stress}.
PEERS = {"phonetisaurus": False, "phonetisaurus-stress": True}


def peer_speed(pairs, work: Path, stress: bool = False) -> float:
    """The peer's 1-best words per CPU-second on these pairs' pronunciations, each once, in one g2pfst process
    (start-up and model load included), as `make peer-p2g` times it."""
    model = work / "model.fst"
    if not model.exists():
        raise SystemExit(f"error: {model} missing; run `make peer-p2g{'-stress' if stress else ''}` first")
    inputs = list(dict.fromkeys(pronunciation(pair, stress) for pair in pairs))
    _, timing = peer_decode(inputs, model, work, tool_environment(), 1, "compare.1best")
    speed = len(inputs) / timing["cpu_seconds"]
    print(f"{work.name} 1-best: {speed:,.0f} words/s")
    return speed


def peer_rows(results: Path, name: str, speeds: list[float]) -> list[dict]:
    test = json.loads((results / name / "metrics.json").read_text())["test"]
    return [
        {"system": name, "params": None, "decoding": "1-best", "cer": test["cer"], "wer": test["wer"],
         "homophone_wer": test["homophone_wer"], "words_per_second": max(speeds), "timed_words_per_second": speeds},
        {"system": name, "params": None, "decoding": "5-best", "wer@3": test["nbest_wer@3"],
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


def measure_export(prefix: Path, pairs, spellings, batch: int) -> list[dict]:
    """`measure` of one export, loading its graphs itself: a task for a worker process."""
    return measure(SpellerGraphs(prefix, threads=1), pairs, spellings, batch)


def measure_all(prefixes: list[Path], pairs, spellings, batch: int, jobs: int) -> list[dict]:
    """The rows of every export, in the order given, measured `jobs` at a time; the largest start first so
    that the last to finish is a small one."""
    if jobs == 1:
        return [row for prefix in prefixes for row in measure_export(prefix, pairs, spellings, batch)]
    size = lambda prefix: sum(path.stat().st_size for path in prefix.parent.glob(prefix.name + ".*.onnx"))  # noqa: E731
    with ProcessPoolExecutor(jobs) as pool:
        largest_first = sorted(prefixes, key=size, reverse=True)
        futures = {prefix: pool.submit(measure_export, prefix, pairs, spellings, batch) for prefix in largest_first}
        return [row for prefix in prefixes for row in futures[prefix].result()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", default=str(EXPORTS_DIR))
    parser.add_argument("--results", default="results/p2g")
    parser.add_argument("--batch", type=int, default=64, help="words per batch (64 was fastest here)")
    parser.add_argument("--jobs", type=int, default=1, help="spellers measured at once, one process each")
    parser.add_argument("--peers", default="runs/peer", help="the peers' models, PEERS/<name>/ (`make peer-p2g`)")
    parser.add_argument(
        "--beam-widths", nargs="+", metavar="SPELLER",
        help=f"instead: these spellers' n-best WER@k for beams {BEAM_WIDTHS} on the validation split -> beam_width.md",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    splits = load_splits("cmudict")
    prefixes = speller_prefixes(Path(args.exports))
    if args.beam_widths:
        missing = sorted(set(args.beam_widths) - set(prefixes))
        if missing:
            raise SystemExit(f"error: no speller export named {', '.join(missing)} in {args.exports}")
        graphs = [SpellerGraphs(prefixes[name], threads=1) for name in args.beam_widths]
        rows = [row for speller in graphs for row in beam_widths(speller, splits["valid"], args.batch)]
        text = (
            f"Validation split of CMUdict ({len(splits['valid']):,} pairs): {N_BEST}-best lists of beam search by "
            f"beam width; words/s on one core (CPU time), batches of {args.batch}:\n\n" + beam_table(rows)
        )
        Path(args.results, "beam_width.md").write_text(text)
        Path(args.results, "beam_width.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(text)
        return

    def timed() -> dict[str, float]:
        return {name: peer_speed(splits["test"], Path(args.peers, name), stress) for name, stress in PEERS.items()}

    before = timed()
    rows = measure_all(list(prefixes.values()), splits["test"], spellings_by_key(splits), args.batch, args.jobs)
    after = timed()
    for name in PEERS:
        rows += peer_rows(Path(args.results), name, [before[name], after[name]])
    speeds = "; ".join(f"{name} {before[name]:,.0f} and {after[name]:,.0f}" for name in PEERS)
    text = (
        f"Test split of CMUdict ({len(splits['test']):,} pairs); words/s on one core (CPU time), "
        f"batches of {args.batch}, {args.jobs} speller(s) measured at once; the peers timed alone in the same run, "
        f"before and after ours "
        f"({speeds} words/s; the faster shown). Spellers whose metadata says `stress: true` read the stress "
        f"digits, as phonetisaurus-stress does:\n\n" + table(rows)
    )
    Path(args.results, "comparison.md").write_text(text)
    Path(args.results, "comparison.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
