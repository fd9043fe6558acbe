"""The work of one request called directly, in-process, without HTTP: the floor the serving overhead is
measured against. /classify: decode and resize the JPEG, run the default classifier at batch 1, build the
answer. /spell: parse the phonemes, greedy decoding by the default speller. The same serving code, models
and thread count as the server, one request at a time; each call timed, so that its median compares with the
server's p50.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.stats import Spread
from serving.registry import load_models


def timed(call: Callable, items: list, repeats: int, seconds: float) -> dict:
    """`call(item)` over the items in turn: a warm-up pass, then `repeats` rounds of at least `seconds` (and
    every item at least once) -> requests/s and the median call in ms, each as a Spread over the rounds."""
    for item in items:
        call(item)
    rates, medians = [], []
    for _ in range(repeats):
        durations, start = [], time.perf_counter()
        for item in itertools.cycle(items):
            before = time.perf_counter()
            call(item)
            durations.append(time.perf_counter() - before)
            if len(durations) >= len(items) and time.perf_counter() - start >= seconds:
                break
        rates.append(len(durations) / (time.perf_counter() - start))
        medians.append(1000 * statistics.median(durations))
    return {"requests/s": Spread.of(rates), "p50": Spread.of(medians)}


def run(exports: Path, threads: int, speller_threads: int, jpegs: list[bytes], phonemes: list[str], repeats: int,
        seconds: float):  # fmt: skip
    models = load_models(exports, threads, speller_threads)
    classifier = models.classifiers[models.default_classifier]
    speller = models.spellers[models.default_speller]

    def classify(data: bytes):
        return classifier.answer(classifier.predict(classifier.preprocess(data)[None])[0])

    def spell(text: str):
        return speller.spell(speller.parse(text))

    return {
        "models": {"classify": classifier.name, "spell": speller.name},
        "classify": timed(classify, jpegs, repeats, seconds),
        "spell": timed(spell, phonemes, repeats, seconds),
    }
