"""Train one scene CNN with SGD; keep the checkpoint with the best validation accuracy.

python -m training.train_cnn --network bn-gap --lr 0.01 --epochs 40
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
import torch.nn.functional as F
from tqdm import tqdm

from training import checkpoint
from training.cnn import NETWORKS, SceneClassifier, count_parameters
from training.plots import plot_curves
from training.scenes import DataError, SceneData, load_scenes

DEFAULT_DATA = "../shared/data/intel48.npz"


@dataclass
class Config:
    network: str = "bn-gap"
    lr: float = 0.01
    epochs: int = 40
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    data: str = DEFAULT_DATA
    threads: int = 2

    @property
    def name(self) -> str:
        return f"{self.network}-lr{self.lr:g}"


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    return pixels.mean(0).tolist(), pixels.std(0).tolist()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256):
    """Mean cross-entropy, accuracy and the predicted labels over a whole split."""
    model.eval()
    logits = torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    predictions = logits.argmax(1)
    return F.cross_entropy(logits, labels).item(), (predictions == labels).float().mean().item(), predictions


def train_epoch(model, optimizer, images, labels, batch_size, generator, desc) -> float:
    model.train()
    order = torch.randperm(len(images), generator=generator)
    total, seen = 0.0, 0
    bar = tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=not sys.stderr.isatty())
    for start in bar:
        batch = order[start : start + batch_size]
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
        seen += len(batch)
        bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
    return total / seen


def train(config: Config, data: SceneData, run_dir: Path, results_dir: Path, resume: bool) -> dict:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    tensors = {s: (torch.from_numpy(data.images[s]), torch.from_numpy(data.labels[s])) for s in data.images}
    mean, std = channel_stats(data.images["train"])
    model = SceneClassifier(config.network, mean, std)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    history, best = [], {"val_acc": -1.0, "epoch": 0}
    last = run_dir / "last.pt"
    if resume and (restored := checkpoint.resume(last, model, optimizer, generator, config.name)):
        history, best = restored
    params = count_parameters(model)
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        train_loss = train_epoch(
            model, optimizer, *tensors["train"], config.batch_size, generator, f"{config.name} {epoch}"
        )
        val_loss, val_acc, _ = evaluate(model, *tensors["val"])
        seconds = time.perf_counter() - start
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds}
        )
        print(
            f"{config.name} epoch {epoch:2d}/{config.epochs}  train_loss {train_loss:.4f}  "
            f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  {seconds:.1f}s",
            flush=True,
        )
        if val_acc > best["val_acc"]:
            best = {"val_acc": val_acc, "epoch": epoch}
            checkpoint.save(run_dir / "best.pt", model=model.state_dict(), network=config.network, mean=mean, std=std)
        checkpoint.save_progress(last, model, optimizer, generator, history, best)
    model.load_state_dict(checkpoint.load(run_dir / "best.pt")["model"])
    _, test_acc, _ = evaluate(model, *tensors["test"])
    metrics = {
        "name": config.name,
        "config": asdict(config),
        "params": params,
        "best_epoch": best["epoch"],
        "val_acc": best["val_acc"],
        "test_acc": test_acc,
        "train_seconds": sum(row["seconds"] for row in history),
        "data_sha256": data.fingerprint(),
        "train_command": "python -m training.train_cnn " + shlex.join(config_args(config)),
        "history": history,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_curves(
        history,
        {"loss": ["train_loss", "val_loss"], "validation accuracy": ["val_acc"]},
        results_dir / "curves.png",
        f"{config.name}: best val_acc {best['val_acc']:.4f} at epoch {best['epoch']}, test_acc {test_acc:.4f}",
    )
    print(f"{config.name}: best epoch {best['epoch']} val_acc {best['val_acc']:.4f} test_acc {test_acc:.4f}")
    return metrics


def config_args(config: Config) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in asdict(config).items() if key != "threads"]


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    parser.add_argument("--network", choices=sorted(NETWORKS), default=defaults.network)
    for key in ("lr", "momentum", "weight_decay"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, default=getattr(defaults, key))
    for key in ("epochs", "batch_size", "seed", "threads"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=getattr(defaults, key))
    parser.add_argument("--data", default=defaults.data, help="intel48.npz or a folder <root>/<class>/*.jpg")
    parser.add_argument("--runs", default="runs/cnn", help="checkpoints go to RUNS/<name>/")
    parser.add_argument("--results", default="results/cnn", help="metrics.json and curves.png go to RESULTS/<name>/")
    parser.add_argument("--resume", action="store_true", help="continue from RUNS/<name>/last.pt if present")
    args = parser.parse_args(argv)
    config = Config(**{k: getattr(args, k) for k in asdict(defaults)})
    return config, args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    try:
        data = load_scenes(config.data)
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    train(config, data, Path(args.runs) / config.name, Path(args.results) / config.name, args.resume)


if __name__ == "__main__":
    main()
