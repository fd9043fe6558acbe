"""Train a P2G speller with teacher forcing and Adam; keep the checkpoint with the best validation CER.

python -m training.train_p2g --model attention
python -m training.train_p2g --model vanilla --data path/to/tsv-folder
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
from training.p2g_data import BOS, EOS, Pair, Vocab, batches, load_splits, pad, spellings_by_key
from training.p2g_metrics import error_rates, wer_at_k
from training.p2g_model import Speller, SpellerConfig
from training.plots import plot_curves

MODELS = {"attention": True, "vanilla": False}


@dataclass
class Config:
    model: str = "attention"
    hidden: int = 128
    embedding: int = 128
    dropout: float = 0.3
    lr: float = 0.003
    batch_size: int = 64
    epochs: int = 20
    clip: float = 1.0
    max_output_length: int = 48
    seed: int = 0
    data: str = "cmudict"
    threads: int = 2

    def speller_config(self) -> SpellerConfig:
        return SpellerConfig(MODELS[self.model], self.embedding, self.hidden, self.dropout)


def build(config: Config, vocab: Vocab) -> Speller:
    return Speller(len(vocab.phonemes), len(vocab.graphemes), config.speller_config())


def torch_step(model: Speller) -> decoding.Step:
    """The decoder step as a numpy step function, for exports.decoding."""

    @torch.inference_mode()
    def step(tokens: np.ndarray, state: decoding.State):
        tensors = {name: torch.from_numpy(value) for name, value in state.items()}
        logits, h, c, _ = model.decoder.step(torch.from_numpy(tokens), **tensors)
        return torch.log_softmax(logits, dim=1).numpy(), {**state, "h": h.numpy(), "c": c.numpy()}

    return step


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


def train_epoch(model, optimizer, pairs, vocab, config: Config, generator, desc) -> float:
    model.train()
    total, count = 0.0, 0
    steps = (len(pairs) + config.batch_size - 1) // config.batch_size
    bar = tqdm(
        batches(pairs, vocab, config.batch_size, generator),
        total=steps,
        desc=desc,
        leave=False,
        disable=not sys.stderr.isatty(),
    )
    for phonemes, targets in bar:
        loss = model.loss(phonemes, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        total += loss.item()
        count += 1
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / count


def train(config: Config, run_dir: Path, results_dir: Path, resume: bool) -> dict:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    splits = load_splits(config.data)
    spellings = spellings_by_key(splits)
    vocab = Vocab.from_pairs([p for pairs in splits.values() for p in pairs])
    model = build(config, vocab)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{config.model}: {params:,} parameters; pairs " + ", ".join(f"{s} {len(p):,}" for s, p in splits.items()))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    history, best = [], {"val_cer": float("inf"), "epoch": 0}
    last = run_dir / "last.pt"
    if resume and (restored := checkpoint.resume(last, model, optimizer, generator, config.model)):
        history, best = restored
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        train_loss = train_epoch(model, optimizer, splits["train"], vocab, config, generator, f"{config.model} {epoch}")
        val = evaluate(model, vocab, splits["valid"], spellings, config)
        seconds = time.perf_counter() - start
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_cer": val["cer"], "val_wer": val["wer"], "seconds": seconds}
        )
        print(
            f"{config.model} epoch {epoch:2d}/{config.epochs}  train_loss {train_loss:.4f}  "
            f"val_cer {val['cer']:.4f}  val_wer {val['wer']:.4f}  {seconds:.0f}s",
            flush=True,
        )
        if val["cer"] < best["val_cer"]:
            best = {"val_cer": val["cer"], "epoch": epoch}
            checkpoint.save(run_dir / "best.pt", model=model.state_dict(), config=asdict(config), vocab=vocab)
        checkpoint.save_progress(last, model, optimizer, generator, history, best)
    model.load_state_dict(checkpoint.load(run_dir / "best.pt")["model"])
    metrics = {
        "name": config.model,
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
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_curves(
        history,
        {"training loss": ["train_loss"], "validation error": ["val_cer", "val_wer"]},
        results_dir / "curves.png",
        f"{config.model}: best val CER {best['val_cer']:.4f} at epoch {best['epoch']}",
    )
    if config.speller_config().attention:
        from training.p2g_plots import attention_heatmaps

        attention_heatmaps(model, vocab, splits["test"][:6], config.max_output_length, results_dir / "attention.png")
    print(json.dumps({k: metrics[k] for k in ("valid", "test")}, indent=2))
    return metrics


def config_args(config: Config) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in asdict(config).items() if key != "threads"]


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    parser.add_argument("--model", choices=sorted(MODELS), default=defaults.model)
    for key, value in asdict(defaults).items():
        if key not in ("model", "data"):
            parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--data", default=defaults.data, help="'cmudict' or a folder with train, valid, test TSVs")
    parser.add_argument("--runs", default="runs/p2g")
    parser.add_argument("--results", default="results/p2g")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    return Config(**{k: getattr(args, k) for k in asdict(defaults)}), args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    try:
        train(config, Path(args.runs) / config.model, Path(args.results) / config.model, args.resume)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
