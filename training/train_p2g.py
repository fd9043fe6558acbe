"""Train a P2G speller with teacher forcing and Adam; keep the checkpoint with the best validation CER.

python -m training.train_p2g --model attention
python -m training.train_p2g --model vanilla --data path/to/tsv-folder
python -m training.train_p2g --model transformer --lr 0.001 --batch-size 256 --epochs 15 --dropout 0.1 \
    --label-smoothing 0.1 --schedule warmup-cosine
python -m training.train_p2g --hidden 256 --embedding 256 --teacher attention-ensemble --distill 0.5 --bf16

The defaults are the reference recipe (hidden 128, dropout 0.3, Adam 0.003 constant, batch 64, 20 epochs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from exports import decoding
from training import checkpoint
from training.bfloat16 import bf16_supported, cpu_name
from training.p2g_data import BOS, EOS, Pair, Vocab, batches, load_splits, pad, spellings_by_key
from training.p2g_metrics import error_rates, wer_at_k
from training.p2g_model import Speller, SpellerConfig, sequence_loss
from training.p2g_teacher import teacher_log_probs
from training.p2g_transformer import TransformerConfig, TransformerSpeller
from training.peer_phonetisaurus import boolean
from training.plots import plot_curves

MODELS = ("attention", "vanilla", "transformer")


@dataclass
class Config:
    model: str = "attention"
    name: str = ""  # the run's name (runs/p2g/NAME, exports/p2g-NAME.*); empty: the model's
    hidden: int = 128
    embedding: int = 128
    encoder_layers: int = 1  # attention and vanilla: layers of the BiLSTM encoder
    dropout: float = 0.3
    lr: float = 0.003
    batch_size: int = 64
    epochs: int = 20
    clip: float = 1.0
    max_output_length: int = 48
    label_smoothing: float = 0.0
    schedule: str = "constant"  # or "warmup-cosine": linear warm-up over the first epoch, then cosine to 0
    # transformer only: model width, heads, feed-forward width, layers of the encoder and of the decoder
    d_model: int = 192
    heads: int = 4
    ffn: int = 768
    layers: int = 3
    teacher: str = ""  # a speller in exports/ (e.g. attention-ensemble): distil its next-character distributions
    distill: float = 0.0  # the share of the loss that goes to the teacher's distributions instead of the gold
    bf16: bool = False  # forward under CPU autocast to bfloat16 (AMX); weights, optimizer, evaluation stay fp32
    stress: bool = False  # read stress digits (AE1 and AE0 differ); without them, every vowel is read bare
    stress_dropout: float = 0.25  # with stress: the share of training words shown bare, so bare input spells too
    seed: int = 0
    data: str = "cmudict"
    threads: int = 2


def run_name(config: Config) -> str:
    return config.name or config.model


def build(config: Config, vocab: Vocab) -> Speller | TransformerSpeller:
    phonemes, graphemes = len(vocab.phonemes), len(vocab.graphemes)
    if config.model == "transformer":
        return TransformerSpeller(phonemes, graphemes, TransformerConfig(
            config.d_model, config.heads, config.ffn, config.layers, config.layers, config.dropout,
            max_output_length=config.max_output_length,
        ))  # fmt: skip
    attention = config.model == "attention"
    return Speller(phonemes, graphemes, SpellerConfig(
        attention, config.embedding, config.hidden, config.dropout, config.encoder_layers
    ))  # fmt: skip


def torch_step(model: Speller | TransformerSpeller) -> decoding.Step:
    """The model's decoder step as a numpy step function, for exports.decoding."""

    @torch.inference_mode()
    def step(tokens: np.ndarray, state: decoding.State):
        tensors = {name: torch.from_numpy(value) for name, value in state.items()}
        logits, updates = model.step(torch.from_numpy(tokens), **tensors)
        return torch.log_softmax(logits, dim=1).numpy(), {**state, **{k: v.numpy() for k, v in updates.items()}}

    return step


def learning_rate_schedule(optimizer, config: Config, steps_per_epoch: int):
    """None for a constant rate; else a per-batch warm-up over one epoch, then a cosine decay to 0."""
    if config.schedule == "constant":
        return None
    warmup, total = steps_per_epoch, steps_per_epoch * config.epochs

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.inference_mode()
def initial_state(model: Speller, phonemes: torch.Tensor) -> decoding.State:
    return {name: value.numpy() for name, value in model.initial_state(phonemes).items()}


def spell(model: Speller, vocab: Vocab, pairs: list[Pair], config: Config, n: int = 0, seed: int = 0):
    """Greedy spellings of every pair (n = 0), or n nucleus samples (top_p 0.8) of each."""
    model.eval()
    step, bos, eos = torch_step(model), vocab.graphemes.index(BOS), vocab.graphemes.index(EOS)
    results = []
    for start in range(0, len(pairs), 512):
        chunk = pairs[start : start + 512]
        phonemes = pad([vocab.encode_phonemes(p.phonemes) for p in chunk])
        state = initial_state(model, phonemes)
        if n == 0:
            sequences, _ = decoding.greedy(step, state, bos, eos, config.max_output_length)
            results += [vocab.decode_word(s) for s in sequences]
        else:
            samples, _ = decoding.nucleus(
                step, state, bos, eos, config.max_output_length, n, top_p=0.8, seed=seed + start
            )
            results += [[vocab.decode_word(s) for s in word] for word in samples]
    return results


def evaluate(model, vocab, pairs, spellings, config: Config, samples: int = 0) -> dict:
    words, keys = [p.word for p in pairs], [p.key for p in pairs]
    metrics = error_rates(words, spell(model, vocab, pairs, config), keys, spellings)
    if samples:
        drawn = spell(model, vocab, pairs, config, n=samples)
        metrics |= {f"wer@{k}": wer_at_k(words, drawn, k) for k in (1, 3, 5) if k <= samples}
    return metrics


def train_epoch(model, optimizer, schedule, pairs, vocab, config: Config, generator, desc, teacher=None) -> float:
    """One pass over the pairs; `teacher`: per pair, the log-probabilities to distil (teacher_log_probs)."""
    model.train()
    total, count = 0.0, 0
    steps = (len(pairs) + config.batch_size - 1) // config.batch_size
    bar = tqdm(
        batches(pairs, vocab, config.batch_size, generator, config.stress_dropout if config.stress else 0.0),
        total=steps,
        desc=desc,
        leave=False,
        disable=not sys.stderr.isatty(),
    )
    for indices, phonemes, targets in bar:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(phonemes, targets)
        soft = None
        if teacher is not None:
            soft = torch.nn.utils.rnn.pad_sequence([teacher[i] for i in indices], batch_first=True).float()
        loss = sequence_loss(logits.float(), targets, config.label_smoothing, soft, config.distill)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        total += loss.item()
        count += 1
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / count


def train(config: Config, run_dir: Path, results_dir: Path, resume: bool) -> dict:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    splits = load_splits(config.data)
    spellings = spellings_by_key(splits)
    vocab = Vocab.from_pairs([p for pairs in splits.values() for p in pairs], config.stress)
    model = build(config, vocab)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    name = run_name(config)
    print(f"{name}: {params:,} parameters; pairs " + ", ".join(f"{s} {len(p):,}" for s, p in splits.items()))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps_per_epoch = -(-len(splits["train"]) // config.batch_size)  # what `batches` yields: full chunks of 50
    schedule = learning_rate_schedule(optimizer, config, steps_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    teacher = None
    if config.teacher:
        start = time.perf_counter()
        teacher = teacher_log_probs(config.teacher, splits["train"], vocab, config.threads)
        print(f"{name}: soft targets of {config.teacher} in {time.perf_counter() - start:.0f}s", flush=True)
    history, best = [], {"val_cer": float("inf"), "epoch": 0}
    last = run_dir / "last.pt"
    if resume and (restored := checkpoint.resume(last, model, optimizer, generator, name, schedule=schedule)):
        history, best = restored
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        train_loss = train_epoch(
            model, optimizer, schedule, splits["train"], vocab, config, generator, f"{name} {epoch}", teacher
        )
        val = evaluate(model, vocab, splits["valid"], spellings, config)
        seconds = time.perf_counter() - start
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_cer": val["cer"], "val_wer": val["wer"], "seconds": seconds}
        )
        print(
            f"{name} epoch {epoch:2d}/{config.epochs}  train_loss {train_loss:.4f}  "
            f"val_cer {val['cer']:.4f}  val_wer {val['wer']:.4f}  {seconds:.0f}s",
            flush=True,
        )
        if val["cer"] < best["val_cer"]:
            best = {"val_cer": val["cer"], "epoch": epoch}
            checkpoint.save(run_dir / "best.pt", model=model.state_dict(), config=asdict(config), vocab=vocab)
        checkpoint.save_progress(last, model, optimizer, generator, history, best, schedule=schedule)
    model.load_state_dict(checkpoint.load(run_dir / "best.pt")["model"])
    metrics = {
        "name": name,
        "config": asdict(config),
        "params": params,
        "best_epoch": best["epoch"],
        "train_seconds": sum(row["seconds"] for row in history),
        "pairs": {s: len(p) for s, p in splits.items()},
        "valid": evaluate(model, vocab, splits["valid"], spellings, config),
        "test": evaluate(model, vocab, splits["test"], spellings, config, samples=5),
        "train_command": "python -m training.train_p2g " + shlex.join(config_args(config)),
        "history": history,
    }
    if config.stress:  # the same speller given input without stress digits
        bare = [p.without_stress() for p in splits["test"]]
        metrics["test_without_stress"] = evaluate(model, vocab, bare, spellings, config)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_curves(
        history,
        {"training loss": ["train_loss"], "validation error": ["val_cer", "val_wer"]},
        results_dir / "curves.png",
        f"{name}: best val CER {best['val_cer']:.4f} at epoch {best['epoch']}",
    )
    if config.model == "attention":
        from training.p2g_plots import attention_heatmaps

        attention_heatmaps(model, vocab, splits["test"][:6], config.max_output_length, results_dir / "attention.png")
    print(json.dumps({k: metrics[k] for k in ("valid", "test")}, indent=2))
    return metrics


def config_args(config: Config) -> list[str]:
    skip = {"threads"} | ({"name"} if not config.name else set())
    return [f"--{key.replace('_', '-')}={value}" for key, value in asdict(config).items() if key not in skip]


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    parser.add_argument("--model", choices=sorted(MODELS), default=defaults.model)
    for key, value in asdict(defaults).items():
        if key not in ("model", "name", "data"):
            kind = boolean if isinstance(value, bool) else type(value)
            flag = {"nargs": "?", "const": True} if isinstance(value, bool) else {}  # `--bf16` or `--bf16=False`
            parser.add_argument(f"--{key.replace('_', '-')}", type=kind, default=value, **flag)
    parser.add_argument("--name", default=defaults.name, help="the run's name (default: the model's)")
    parser.add_argument("--data", default=defaults.data, help="'cmudict' or a folder with train, valid, test TSVs")
    parser.add_argument("--runs", default="runs/p2g")
    parser.add_argument("--results", default="results/p2g")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    return Config(**{k: getattr(args, k) for k in asdict(defaults)}), args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    if config.bf16 and not bf16_supported():
        raise SystemExit(f"error: --bf16: this CPU ({cpu_name()}) has no bfloat16 "
                         "support in oneDNN (AVX-512 BF16 or AMX), which the LSTM needs under autocast; "
                         "drop --bf16 to train in float32")  # fmt: skip
    try:
        train(config, Path(args.runs) / run_name(config), Path(args.results) / run_name(config), args.resume)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
