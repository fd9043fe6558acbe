"""Batched decoding of a seq2seq speller over any step function, in numpy.

A step function maps (tokens [B], state) to (log_probs [B, V], new state), where the state is a dict of
batch-first arrays. Rows whose word has ended are dropped from the state, so the batch shrinks as words
finish. Scores are log-probabilities under the model (temperature 1), summed over the tokens emitted,
the end token included.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

State = dict[str, np.ndarray]
Step = Callable[[np.ndarray, State], tuple[np.ndarray, State]]
Chooser = Callable[[np.ndarray], np.ndarray]


def batch_size(state: State) -> int:
    return len(next(iter(state.values())))


def repeat_rows(state: State, n: int) -> State:
    """Each word's state n times in a row: rows 0..n-1 are word 0, and so on."""
    return {name: np.repeat(value, n, axis=0) for name, value in state.items()}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def nucleus_sample(log_probs: np.ndarray, top_p: float, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """One token per row from the smallest set of most likely tokens whose probability reaches top_p.

    Probabilities are those of log_probs / temperature. Ties keep the lower token id first, so that as
    top_p goes to 0 the choice is exactly the argmax.
    """
    probs = softmax(log_probs / temperature)
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    mass_before = np.cumsum(sorted_probs, axis=1) - sorted_probs
    kept = np.where(mass_before < top_p, sorted_probs, 0.0)
    kept[:, 0] = sorted_probs[:, 0]  # the most likely token is always kept
    cumulative = np.cumsum(kept, axis=1)
    draws = rng.random(len(probs)) * cumulative[:, -1]
    picks = np.minimum((cumulative < draws[:, None]).sum(axis=1), probs.shape[1] - 1)
    return order[np.arange(len(probs)), picks]


def _decode(step: Step, state: State, bos: int, eos: int, max_len: int, choose: Chooser):
    rows = batch_size(state)
    alive = np.arange(rows)
    tokens = np.full(rows, bos, dtype=np.int64)
    sequences: list[list[int]] = [[] for _ in range(rows)]
    scores = np.zeros(rows)
    for _ in range(max_len):
        log_probs, state = step(tokens, state)
        chosen = choose(log_probs).astype(np.int64)
        scores[alive] += log_probs[np.arange(len(alive)), chosen]
        going = chosen != eos
        for row, token in zip(alive[going], chosen[going]):
            sequences[row].append(int(token))
        if not going.any():
            break
        alive, tokens = alive[going], chosen[going]
        state = {name: value[going] for name, value in state.items()}
    return sequences, scores


def greedy(step: Step, state: State, bos: int, eos: int, max_len: int):
    """The most likely token at every step; returns (token lists, scores) per word."""
    return _decode(step, state, bos, eos, max_len, lambda log_probs: log_probs.argmax(axis=1))


def nucleus(
    step: Step,
    state: State,
    bos: int,
    eos: int,
    max_len: int,
    n: int,
    top_p: float,
    temperature: float = 1.0,
    seed: int | None = None,
):
    """n nucleus samples per word, all in one batch; returns (n token lists per word, n scores per word)."""
    rng = np.random.default_rng(seed)
    words = batch_size(state)
    sequences, scores = _decode(
        step,
        repeat_rows(state, n),
        bos,
        eos,
        max_len,
        lambda log_probs: nucleus_sample(log_probs, top_p, temperature, rng),
    )
    return [sequences[i * n : (i + 1) * n] for i in range(words)], scores.reshape(words, n)
