"""Speller metrics: CER and WER with jiwer, the homophone-aware WER, and WER@k over k samples."""

from __future__ import annotations

import jiwer


def error_rates(words: list[str], predictions: list[str], keys: list[str], spellings: dict[str, set[str]]) -> dict:
    """CER and WER against the one reference word of each pair; the homophone-aware WER accepts any
    spelling of the pair's pronunciation found in the dictionary."""
    return {
        "cer": jiwer.cer(words, predictions),
        "wer": jiwer.wer(words, predictions),
        "homophone_wer": sum(p not in spellings[k] for p, k in zip(predictions, keys)) / len(words),
    }


def wer_at_k(words: list[str], samples: list[list[str]], k: int) -> float:
    """A pair is right when any of its first k samples is the word."""
    return sum(word not in options[:k] for word, options in zip(words, samples)) / len(words)
