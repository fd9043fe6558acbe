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


def length_batches(lengths, size: int) -> list[np.ndarray]:
    """Indices of words in batches of at most `size`, shortest words first, so that a batch pads little and
    its words end at about the same step (batched throughput; callers put the results back in order)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[start : start + size] for start in range(0, len(order), size)]


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
        tokens = chosen[going]
        if not going.all():  # copy the state only when some word has ended (most steps, none has)
            alive = alive[going]
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


def length_normalized(score: float, length: int, alpha: float) -> float:
    """GNMT's length penalty: log-probability / ((5 + length) / 6) ** alpha; alpha 0 ranks by log-probability."""
    return score / ((5 + length) / 6) ** alpha


def beam_search(
    step: Step,
    state: State,
    bos: int,
    eos: int,
    max_len: int,
    beam_size: int,
    n_best: int = 1,
    alpha: float = 0.6,
):
    """The n_best distinct spellings per word, best first by length-normalised log-probability, from a beam of
    beam_size hypotheses per word, all words in one batch; returns (token lists, log-probabilities) per word.

    A word's search ends when beam_size hypotheses have ended, or at max_len, where the unfinished ones
    compete too.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    words, k = batch_size(state), beam_size
    state = repeat_rows(state, k)  # row w * k + j is hypothesis j of word w
    tokens = np.full(words * k, bos, dtype=np.int64)
    scores = np.full((words, k), -np.inf)
    scores[:, 0] = 0.0  # the beams start as one hypothesis
    prefixes: list[list[int]] = [[] for _ in range(words * k)]
    finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(words)]
    done = np.zeros(words, dtype=bool)
    for _ in range(max_len):
        log_probs, stepped = step(tokens, state)
        # a tensor the step passed through as it was (the encoder's memory, say) is the same in every hypothesis
        # of a word, so reordering hypotheses within words leaves it as it is: only the others are reordered
        changed = [name for name, value in stepped.items() if value is not state.get(name)]
        state = stepped
        vocab = log_probs.shape[1]
        totals = (scores.reshape(-1, 1) + log_probs).reshape(words, k * vocab)
        candidates = np.argsort(-totals, axis=1, kind="stable")[:, : 2 * k]
        parents = np.zeros((words, k), dtype=np.int64)
        next_tokens = np.full((words, k), eos, dtype=np.int64)
        next_scores = np.full((words, k), -np.inf)
        for w in np.flatnonzero(~done):
            kept = 0
            for flat in candidates[w]:
                total = totals[w, flat]
                if not np.isfinite(total):
                    break
                parent, token = divmod(int(flat), vocab)
                prefix = prefixes[w * k + parent]
                if token == eos:
                    finished[w].append((length_normalized(total, len(prefix) + 1, alpha), float(total), prefix))
                else:
                    parents[w, kept], next_tokens[w, kept], next_scores[w, kept] = parent, token, total
                    kept += 1
                    if kept == k:
                        break
            if len(finished[w]) >= k:
                done[w] = True
        if done.all():
            break
        rows = (np.arange(words)[:, None] * k + parents).reshape(-1)
        prefixes = [prefixes[r] + [int(t)] for r, t in zip(rows, next_tokens.reshape(-1))]
        state = {**state, **{name: state[name][rows] for name in changed}}
        tokens, scores = next_tokens.reshape(-1), np.where(done[:, None], -np.inf, next_scores)
    results, result_scores = [], []
    for w in range(words):
        pool = list(finished[w])
        if not done[w]:  # the length cap came first: unfinished hypotheses compete as they are
            pool += [(length_normalized(s, len(p), alpha), float(s), p)
                     for s, p in zip(scores[w], prefixes[w * k : (w + 1) * k]) if np.isfinite(s)]  # fmt: skip
        best: dict[tuple[int, ...], tuple[float, float]] = {}
        for normalized, raw, prefix in sorted(pool, key=lambda item: -item[0]):
            best.setdefault(tuple(prefix), (normalized, raw))
        ranked = list(best.items())[:n_best]
        results.append([list(prefix) for prefix, _ in ranked])
        result_scores.append([raw for _, (_, raw) in ranked])
    return results, result_scores
