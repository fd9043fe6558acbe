"""Train one scene CNN with SGD; keep the checkpoint with the best validation accuracy (with --train-on-val,
which fits the validation split too, the last one).

    python -m training.train_cnn --network bn-gap --lr 0.01 --epochs 40
    python -m training.train_cnn --network resnet --lr 0.2 --epochs 30 --augment resized-crop \
        --label-smoothing 0.1 --schedule onecycle --nesterov --weight-decay 5e-4 --ema 0.999 --name resnet

The defaults are the reference recipe (no augmentation, constant learning rate).
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
from training.augment import AUGMENTATIONS, cutmix, mixup
from training.bfloat16 import bf16_supported, cpu_name
from training.cnn import NETWORKS, NUM_CLASSES, FlipAveraged, LogitAveraged, SceneClassifier, count_parameters
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
    nesterov: bool = False
    schedule: str = "constant"  # or "onecycle": warm up to lr, then anneal, stepped every batch
    augment: str = "none"  # a key of training.augment.AUGMENTATIONS
    mixup: float = 0.0  # Beta(alpha, alpha) mixing weight; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) area kept of each image, the rest a box of another; 0 = off
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay of an exponential moving average of the weights, evaluated and kept; 0 = off
    teacher: str = ""  # best.pt of other runs, comma-separated: distil their (mean) soft labels into this network
    distill: float = 0.0  # weight of the distillation term (the rest goes to cross-entropy with the labels)
    temperature: float = 2.0  # softmax temperature of the distillation term
    bf16: bool = False  # forward and loss under CPU autocast to bfloat16 (AMX); weights, optimizer, eval stay fp32
    sam: float = 0.0  # radius rho of sharpness-aware minimisation (two passes a step); 0 = plain SGD steps
    train_on_val: bool = False  # fit on train and val together and keep the last epoch: only test then measures it
    seed: int = 0
    data: str = DEFAULT_DATA
    run_name: str = ""
    threads: int = 2

    def __post_init__(self):
        if self.mixup and self.cutmix:
            raise ValueError("--mixup and --cutmix mix the same batch twice: choose one")

    @property
    def name(self) -> str:
        return self.run_name or f"{self.network}-lr{self.lr:g}"


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
    return pixels.mean(0).tolist(), pixels.std(0).tolist()


@torch.inference_mode()
def logits_of(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's logits over a whole split, in eval mode, a batch at a time."""
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256):
    """Mean cross-entropy, accuracy and the predicted labels over a whole split."""
    logits = logits_of(model, images, batch_size)
    predictions = logits.argmax(1)
    return F.cross_entropy(logits, labels).item(), (predictions == labels).float().mean().item(), predictions


def saw_validation(metrics: dict) -> bool:
    """Whether a finished run was fitted on the validation split too (--train-on-val): its validation accuracy is
    then of seen images, so nothing may be chosen by it (exports, ensembles); only test measures the run."""
    return metrics.get("config", {}).get("train_on_val", False)


def load_classifier(path: Path) -> SceneClassifier:
    """A trained classifier from a run's best.pt, in eval mode (for export, or as a distillation teacher)."""
    saved = checkpoint.load(path)
    model = SceneClassifier(saved["network"], saved["mean"], saved["std"])
    model.load_state_dict(saved["model"])
    return model.eval()


def load_teacher(spec: str) -> torch.nn.Module:
    """The distillation teacher: one run's classifier, or the logit average of several ("a/best.pt,b/best.pt")."""
    models = [load_classifier(Path(path)).requires_grad_(False) for path in spec.split(",")]
    return models[0] if len(models) == 1 else LogitAveraged(models).eval()


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, scaled by T^2 so that its gradients keep their size."""
    student = F.log_softmax(logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def sharpness_aware_step(model: torch.nn.Module, batch_loss, rho: float) -> None:
    """Leave in .grad the gradient at the worst nearby weights w + rho * g / |g| (SAM, Foret et al. 2021).

    Expects .grad to hold the gradient at w. The second pass leaves the batch-norm running statistics as the first
    pass set them (momentum 0), so that each batch updates them once."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    with torch.no_grad():
        weights = [p.detach().clone() for p in params]
        torch._foreach_add_(params, [p.grad * (rho / (norm + 1e-12)) for p in params])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    model.zero_grad(set_to_none=True)
    batch_loss().backward()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    with torch.no_grad():
        torch._foreach_copy_(params, weights)  # exactly w again (w + e - e would round)


def train_epoch(model, optimizer, schedule, ema, images, labels, config: Config, generator, desc, teacher=None):
    model.train()
    augment = AUGMENTATIONS[config.augment]
    order = torch.randperm(len(images), generator=generator)
    total, seen = 0.0, 0
    bar = tqdm(range(0, len(order), config.batch_size), desc=desc, leave=False, disable=not sys.stderr.isatty())
    for start in bar:
        batch = order[start : start + config.batch_size]
        inputs, targets = images[batch], labels[batch]
        if augment is not None:
            inputs = augment(inputs, generator)
        if config.mixup:
            inputs, targets = mixup(inputs.float(), targets, NUM_CLASSES, config.mixup, generator)
        if config.cutmix:
            inputs, targets = cutmix(inputs.float(), targets, NUM_CLASSES, config.cutmix, generator)
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                teacher_logits = teacher(inputs).float()

        def batch_loss(inputs=inputs, targets=targets, teacher_logits=teacher_logits):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                logits = model(inputs)
                loss = F.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing)
                if teacher_logits is not None:
                    soft = distillation_loss(logits.float(), teacher_logits, config.temperature)
                    loss = (1 - config.distill) * loss + config.distill * soft
            return loss

        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss()
        loss.backward()
        if config.sam:
            sharpness_aware_step(model, batch_loss, config.sam)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if ema is not None:
            ema.update_parameters(model)
        total += loss.item() * len(batch)
        seen += len(batch)
        bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
    return total / seen


def train(config: Config, data: SceneData, run_dir: Path, results_dir: Path, resume: bool) -> dict:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    tensors = {s: (torch.from_numpy(data.images[s]), torch.from_numpy(data.labels[s])) for s in data.images}
    mean, std = channel_stats(data.images["train"])
    fitted = tensors["train"]
    if config.train_on_val:  # validation accuracy is then of seen images: still logged, never used to choose
        fitted = tuple(torch.cat([tensors["train"][i], tensors["val"][i]]) for i in range(2))
    # channels_last: oneDNN's own layout for convolutions on a CPU, so no reordering before and after each one.
    # The arithmetic is the same; checkpoints load into a model of either layout.
    model = SceneClassifier(config.network, mean, std).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    steps = (len(fitted[0]) + config.batch_size - 1) // config.batch_size
    schedule = (
        torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, epochs=config.epochs, steps_per_epoch=steps)
        if config.schedule == "onecycle"
        else None
    )
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema), use_buffers=True
        )
        if config.ema
        else None
    )
    teacher = load_teacher(config.teacher) if config.teacher else None
    evaluated = model if ema is None else ema.module  # the weights that are measured, kept and exported
    generator = torch.Generator().manual_seed(config.seed)
    history, best = [], {"val_acc": -1.0, "epoch": 0}
    last = run_dir / "last.pt"
    extra = {"schedule": schedule, "ema": ema}
    if resume and (restored := checkpoint.resume(last, model, optimizer, generator, config.name, **extra)):
        history, best = restored
    params = count_parameters(model)
    for epoch in range(len(history) + 1, config.epochs + 1):
        start = time.perf_counter()
        train_loss = train_epoch(
            model, optimizer, schedule, ema, *fitted, config, generator, f"{config.name} {epoch}", teacher
        )
        val_loss, val_acc, _ = evaluate(evaluated, *tensors["val"])
        seconds = time.perf_counter() - start
        history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds}
        )
        print(
            f"{config.name} epoch {epoch:2d}/{config.epochs}  train_loss {train_loss:.4f}  "
            f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  {seconds:.1f}s",
            flush=True,
        )
        if val_acc > best["val_acc"] or config.train_on_val:
            best = {"val_acc": val_acc, "epoch": epoch}
            state = evaluated.state_dict()
            checkpoint.save(run_dir / "best.pt", model=state, network=config.network, mean=mean, std=std)
        checkpoint.save_progress(last, model, optimizer, generator, history, best, **extra)
    evaluated.load_state_dict(checkpoint.load(run_dir / "best.pt")["model"])
    _, test_acc, _ = evaluate(evaluated, *tensors["test"])
    # Measurements for the ablation of our own recipes: flip averaging at test time, the last epoch's raw
    # weights (EMA off) against the averaged ones, and the distillation teacher's own accuracy.
    flip = {split: evaluate(FlipAveraged(evaluated), *tensors[split])[1] for split in ("val", "test")}
    measured = {"raw_weights_last_epoch_val_acc": evaluate(model, *tensors["val"])[1]} if ema is not None else {}
    if teacher is not None:  # what the student is set against: the accuracy of the soft labels it learnt from
        measured["teacher"] = {f"{split}_acc": evaluate(teacher, *tensors[split])[1] for split in ("val", "test")}
    metrics = {
        "name": config.name,
        "config": asdict(config),
        "params": params,
        "best_epoch": best["epoch"],
        "val_acc": best["val_acc"],
        "test_acc": test_acc,
        "flip_averaging": {"val_acc": flip["val"], "test_acc": flip["test"]},
        **measured,
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
    """The command-line flags that reproduce `config` (flags are spelled as in parse_args)."""
    flags = []
    for key, value in asdict(config).items():
        if key == "threads" or (key == "run_name" and not value):
            continue
        flag = "--name" if key == "run_name" else f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags.append(f"{flag}={value}")
    return flags


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    parser.add_argument("--network", choices=sorted(NETWORKS), default=defaults.network)
    for key in (
        "lr",
        "momentum",
        "weight_decay",
        "mixup",
        "cutmix",
        "label_smoothing",
        "ema",
        "distill",
        "temperature",
        "sam",
    ):
        parser.add_argument(f"--{key.replace('_', '-')}", type=float, default=getattr(defaults, key))
    for key in ("epochs", "batch_size", "seed", "threads"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=getattr(defaults, key))
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="train under CPU autocast to bfloat16: about 1.9x faster on a CPU with AMX, same fp32 weights",
    )
    parser.add_argument(
        "--train-on-val",
        action="store_true",
        help="fit on the train and validation splits together and keep the last epoch (only test then measures it)",
    )
    parser.add_argument(
        "--teacher",
        default=defaults.teacher,
        help="best.pt of a trained run to distil from; several, comma-separated, distil their logit average",
    )
    parser.add_argument("--schedule", choices=["constant", "onecycle"], default=defaults.schedule)
    parser.add_argument("--augment", choices=sorted(AUGMENTATIONS), default=defaults.augment)
    parser.add_argument("--name", dest="run_name", default="", help="run name (default: <network>-lr<lr>)")
    parser.add_argument("--data", default=defaults.data, help="intel48.npz or a folder <root>/<class>/*.jpg")
    parser.add_argument("--runs", default="runs/cnn", help="checkpoints go to RUNS/<name>/")
    parser.add_argument("--results", default="results/cnn", help="metrics.json and curves.png go to RESULTS/<name>/")
    parser.add_argument("--resume", action="store_true", help="continue from RUNS/<name>/last.pt if present")
    args = parser.parse_args(argv)
    try:
        config = Config(**{k: getattr(args, k) for k in asdict(defaults)})
    except ValueError as error:
        parser.error(str(error))
    return config, args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    if config.bf16 and not bf16_supported():
        warning = (f"warning: --bf16: this CPU ({cpu_name()}) has no bfloat16 hardware (AVX-512 BF16 or AMX), "
                   "so oneDNN emulates it, many times slower than float32; drop --bf16 unless you mean to")  # fmt: skip
        print(warning, file=sys.stderr)
    try:
        data = load_scenes(config.data)
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    train(config, data, Path(args.runs) / config.name, Path(args.results) / config.name, args.resume)


if __name__ == "__main__":
    main()
