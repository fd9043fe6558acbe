"""Distillation targets for a speller: an exported speller's distribution over the next character at every
position of every training spelling, teacher-forced, computed once through ONNX Runtime.

The teacher is any speller in exports/ (an ensemble, `make ensemble-p2g`, is the point): training a single
network on its soft distributions as well as on the gold characters (word-level knowledge distillation)
carries part of the ensemble's accuracy into a model that decodes at a third of its cost.
"""

from __future__ import annotations

import numpy as np
import torch

from exports import EXPORTS_DIR
from exports.decoding import length_batches
from exports.runtime import SpellerGraphs, speller_prefixes
from training.p2g_data import Pair, Vocab, pad


def teacher_log_probs(name: str, pairs: list[Pair], vocab: Vocab, threads: int, batch: int = 256) -> list[torch.Tensor]:
    """For each pair, the teacher's log-probabilities of the characters after BOS, given the gold ones before
    (float16 [len(word) + 1, V], the shape of the student's teacher-forced logits for that pair)."""
    prefixes = speller_prefixes(EXPORTS_DIR)
    if name not in prefixes:
        raise ValueError(f"no speller export named {name!r} in {EXPORTS_DIR}; there are: {', '.join(prefixes)}")
    graphs = SpellerGraphs(prefixes[name], threads)
    meta = graphs.metadata
    if tuple(meta["phonemes"]) != vocab.phonemes or tuple(meta["graphemes"]) != vocab.graphemes:
        raise ValueError(f"the teacher {name!r} was trained with other vocabularies than this data's")
    soft: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    for group in length_batches([len(p.phonemes) for p in pairs], batch):
        chosen = [pairs[i] for i in group]
        targets = pad([vocab.encode_word(p.word) for p in chosen]).numpy()
        state = graphs.initial_state(pad([vocab.encode_phonemes(p.phonemes) for p in chosen]).numpy())
        steps = []
        for t in range(targets.shape[1] - 1):  # padding tokens past a word's EOS are fed too; never read
            log_probs, state = graphs.step(targets[:, t], state)
            steps.append(log_probs)
        # clipped: an ensemble's log of mean probabilities can reach -inf, and KL would turn 0 * inf into NaN
        stacked = torch.from_numpy(np.maximum(np.stack(steps, axis=1), -30.0).astype(np.float16))
        for row, (index, pair) in enumerate(zip(group, chosen)):
            soft[index] = stacked[row, : len(pair.word) + 1].clone()
    return soft
