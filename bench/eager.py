"""PyTorch eager twins of the exports, built from the architecture their metadata names, so that they run on a
fresh clone where runs/ (the training checkpoints) does not exist.

Weights are random (seeded): the cost of a convolution, an LSTM step or an attention layer does not depend
on the values of its weights. A speller with random weights would spell other words, though, and so run a
different number of decoder steps; `steered` makes its decoding emit exactly the tokens ONNX Runtime
produced, so that PyTorch runs the same steps on the same shrinking batch, and only the speed differs.
"""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace

import numpy as np
import torch

from exports.decoding import State, Step
from training import train_p2g
from training.cnn import FlipAveraged, LogitAveraged, SceneClassifier, count_parameters

NETWORK_FLAG = re.compile(r"--network[= ](\S+)")


def classifier(metadata: dict, seed: int = 0) -> torch.nn.Module:
    """The classifier network named by the export's `train_command` (else its `name`), with random weights;
    averaging flips when the export's graph does (metrics `flip_averaging`), so that both do the same work.
    An ensemble export (`members`) is the logit average of its members' networks, built the same way."""
    if "members" in metadata:
        shared = {key: value for key, value in metadata.items() if key != "members"}
        members = [classifier({**shared, **member, "metrics": {}}, seed + i) for i, member in
                   enumerate(metadata["members"])]  # fmt: skip
        return LogitAveraged(members).eval()
    found = NETWORK_FLAG.search(metadata.get("train_command", ""))
    network = found.group(1) if found else metadata["name"]
    pre = metadata["preprocessing"]
    torch.manual_seed(seed)
    model = SceneClassifier(network, pre["mean"], pre["std"]).eval()
    return FlipAveraged(model).eval() if metadata["metrics"].get("flip_averaging") else model


def speller(metadata: dict, seed: int = 0) -> torch.nn.Module:
    """The speller of the export's training `config`, built by training.train_p2g.build, random weights."""
    known = {field.name for field in dataclasses.fields(train_p2g.Config)}
    config = train_p2g.Config(**{k: v for k, v in metadata["config"].items() if k in known})
    vocab = SimpleNamespace(phonemes=metadata["phonemes"], graphemes=metadata["graphemes"])
    torch.manual_seed(seed)
    return train_p2g.build(config, vocab).eval()


def same_size(model: torch.nn.Module, metadata: dict) -> bool:
    """Whether the twin has the export's parameter count, i.e. is the same architecture."""
    return count_parameters(model) == int(metadata["params"])


@torch.inference_mode()
def initial_state(model: torch.nn.Module, phoneme_ids: np.ndarray) -> State:
    return {name: value.numpy() for name, value in model.initial_state(torch.from_numpy(phoneme_ids)).items()}


def speller_step(model: torch.nn.Module) -> Step:
    return train_p2g.torch_step(model)


def steered(step: Step, sequences: list[list[int]], eos: int) -> Step:
    """`step`, with its log-probabilities replaced by a certainty of the next token of `sequences` (row r
    emits sequences[r], then eos). Every step still runs the model in full; greedy or nucleus choice then
    picks the steered token. Rows are tracked as exports.decoding drops them, in the same order."""
    targets = [[*sequence, eos] for sequence in sequences]
    alive, position = np.arange(len(targets)), 0

    def run(tokens: np.ndarray, state: State):
        nonlocal alive, position
        log_probs, state = step(tokens, state)
        forced = np.array([targets[row][position] for row in alive])
        certain = np.full_like(log_probs, -np.inf)
        certain[np.arange(len(alive)), forced] = 0.0
        alive, position = alive[forced != eos], position + 1
        return certain, state

    return run
