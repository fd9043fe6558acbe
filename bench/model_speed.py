"""Model speed without HTTP: ONNX Runtime vs PyTorch eager, same machine, same thread count (the classifiers'
and the spellers' of the server, `--threads` and `--speller-threads`).

Classifiers: images/s at batch 1, 8 and 64 on random pixels (the cost of a CNN does not depend on them).
Spellers: words/s of greedy decoding at batch 1 (the words one by one) and at batch 64 (all in one batch),
and of nucleus decoding with n=5 samples per word; on real CMUdict test pronunciations. ONNX Runtime runs
through exports.runtime and exports.decoding, as the service does; PyTorch runs the same decoding steered
to ONNX Runtime's tokens (bench/eager.py); a speller made from other exports (an ensemble, an int8 copy)
has no PyTorch twin and is timed on ONNX Runtime alone. The two engines' repeats alternate, so that a
background load weighs on both alike (bench.stats.alternate).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench import eager
from bench.stats import alternate
from exports import decoding
from exports import metadata as export_metadata
from exports.runtime import SpellerGraphs, load_session, speller_prefixes

CNN_BATCHES = (1, 8, 64)
SPELL_BATCH = 64
SINGLE_WORDS = 16  # words decoded one by one per call at batch 1
NUCLEUS = {"n": 5, "top_p": 0.8}


def classifiers(exports: Path, threads: int, repeats: int, seconds: float) -> list[dict]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(CNN_BATCHES), 48, 48, 3), dtype=np.uint8)
    paths = sorted(exports.glob("cnn-*.onnx"))
    return [row for path in paths for row in classifier(path, images, threads, repeats, seconds)]


def classifier(path: Path, images: np.ndarray, threads: int, repeats: int, seconds: float) -> list[dict]:
    session = load_session(path, threads)
    metadata = export_metadata.from_session(session, str(path))
    pre = metadata["preprocessing"]
    pixels = images[:, : pre["height"], : pre["width"]]
    model = eager.classifier(metadata)
    rows = []
    for batch in CNN_BATCHES:
        feed, tensor = pixels[:batch], torch.from_numpy(pixels[:batch])
        with torch.inference_mode():
            rates = alternate(
                {"ort": lambda f=feed: session.run(["logits"], {"images": f}), "torch": lambda t=tensor: model(t)},
                batch, repeats, seconds,
            )  # fmt: skip
        rows.append({"model": metadata["name"], "file": path.name, "params": int(metadata["params"]),
                     "same_size": eager.same_size(model, metadata), "batch": batch, **rates})  # fmt: skip
    return rows


def pad(words: list[list[int]]) -> np.ndarray:
    ids = np.zeros((len(words), max(map(len, words))), dtype=np.int64)
    for row, word in enumerate(words):
        ids[row, : len(word)] = word
    return ids


def made_from_exports(metadata: dict) -> bool:
    """An export made from other exports, an ensemble (training.ensemble_p2g) or an int8 copy
    (training.quantize_p2g), has no PyTorch model of its own to compare with: it is timed on ONNX Runtime alone."""
    return "members" in metadata or "quantized_from" in metadata


def spellers(exports: Path, pronunciations: list[tuple[str, ...]], threads: int, repeats: int, seconds: float):
    return [
        row
        for prefix in speller_prefixes(exports).values()
        for row in speller(prefix, pronunciations, threads, repeats, seconds)
    ]


def speller(prefix: Path, pronunciations: list[tuple[str, ...]], threads: int, repeats: int, seconds: float):
    graphs = SpellerGraphs(prefix, threads)
    meta = graphs.metadata
    index = {symbol: i for i, symbol in enumerate(meta["phonemes"])}
    symbols = [export_metadata.speller_symbols(p, meta["stress"]) for p in pronunciations]
    words = [[index[s] for s in p] for p in symbols if all(s in index for s in p)][:SPELL_BATCH]
    singles, batch = [pad([w]) for w in words[:SINGLE_WORDS]], pad(words)
    bos, eos, cap = meta["special_tokens"]["bos"], meta["special_tokens"]["eos"], int(meta["max_output_length"])

    def ort_greedy(ids):
        return decoding.greedy(graphs.step, graphs.initial_state(ids), bos, eos, cap)[0]

    def ort_nucleus(ids, seed):
        samples, _ = decoding.nucleus(graphs.step, graphs.initial_state(ids), bos, eos, cap, seed=seed, **NUCLEUS)
        return [s for word in samples for s in word]

    # ONNX Runtime's tokens, which PyTorch is then steered to (checked: it reproduces them)
    single_tokens = [ort_greedy(ids) for ids in singles]
    batch_tokens = ort_greedy(batch)
    sample_tokens = [ort_nucleus(ids, seed) for seed, ids in enumerate(singles)]
    modes = {
        "greedy, batch 1": {"ort": lambda: [ort_greedy(ids) for ids in singles]},  # the first SINGLE_WORDS words
        f"greedy, batch {len(words)}": {"ort": lambda: ort_greedy(batch)},
        f"nucleus n={NUCLEUS['n']}, batch 1": {"ort": lambda: [ort_nucleus(i, seed) for seed, i in enumerate(singles)]},
    }  # fmt: skip
    model = None if made_from_exports(meta) else eager.speller(meta)  # ONNX Runtime alone when there is no twin
    if model is not None:
        torch_step = eager.speller_step(model)

        def torch_greedy(ids, tokens):
            step = eager.steered(torch_step, tokens, eos)
            return decoding.greedy(step, eager.initial_state(model, ids), bos, eos, cap)[0]

        def torch_nucleus(ids, seed, tokens):
            step = eager.steered(torch_step, tokens, eos)
            samples, _ = decoding.nucleus(step, eager.initial_state(model, ids), bos, eos, cap, seed=seed, **NUCLEUS)
            return [s for word in samples for s in word]

        assert [torch_greedy(ids, t) for ids, t in zip(singles, single_tokens)] == single_tokens
        assert torch_greedy(batch, batch_tokens) == batch_tokens
        assert torch_nucleus(singles[0], 0, sample_tokens[0]) == sample_tokens[0]
        greedy_1, greedy_n, nucleus_1 = modes.values()
        greedy_1["torch"] = lambda: [torch_greedy(ids, t) for ids, t in zip(singles, single_tokens)]
        greedy_n["torch"] = lambda: torch_greedy(batch, batch_tokens)
        nucleus_1["torch"] = lambda: [
            torch_nucleus(ids, s, t) for s, (ids, t) in enumerate(zip(singles, sample_tokens))
        ]
    spellings = ([t[0] for t in single_tokens], batch_tokens, [s for word in sample_tokens for s in word])
    rows = []
    for (mode, engines), count, spelled in zip(modes.items(), (len(singles), len(words), len(singles)), spellings):
        rows.append({"model": meta["name"], "params": int(meta["params"]),
                     "same_size": model is None or eager.same_size(model, meta), "mode": mode, "words": count,
                     "letters": float(np.mean([len(s) for s in spelled])),
                     "torch": None, **alternate(engines, count, repeats, seconds)})  # fmt: skip
    return rows


def run(exports: Path, pronunciations, threads: int, speller_threads: int, repeats: int, seconds: float) -> dict:
    """Classifiers on `threads` threads, spellers on `speller_threads`, both engines alike."""
    torch.set_num_threads(threads)
    measured = {"classifiers": classifiers(exports, threads, repeats, seconds)}
    torch.set_num_threads(speller_threads)
    measured["spellers"] = spellers(exports, pronunciations, speller_threads, repeats, seconds)
    return measured
