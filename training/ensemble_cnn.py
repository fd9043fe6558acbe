"""A scene classifier made of several trained runs: the mean of their logits, exported as one graph.

    python -m training.ensemble_cnn --candidates resnet-narrow-seed1 resnet-half-seed1 resnet-half-seed2

Which runs join is chosen on the validation split, within issue #10's budget of 3,000,000 parameters for the
whole graph: every subset of two or more candidates that fits is scored by validation accuracy (then by
validation loss, on a tie), and the best is exported as exports/cnn-NAME.onnx with the contract, metadata
and parity check of a single network (`training.export_cnn.export_classifier`). Only it is scored on the
test split. results/cnn/NAME/ keeps the table of every subset that fits (selection.md, the candidates alone
too, for comparison) and the chosen one's figures (selection.json).

A candidate is a finished run (results/cnn/NAME/metrics.json): its weights come from runs/cnn/NAME/best.pt,
or, where that checkpoint is not (runs/ stays on the machine that trained), from the export of exports/ that
is this run, rebuilt in PyTorch (`training.cnn_from_export`) and checked against ONNX Runtime. So the served
network can join an ensemble anywhere. `--missing` prints the candidates with neither, for make to train.

Only served models are committed, and cnn.onnx is the best classifier of exports/ by validation accuracy; so
the ensemble is exported only when it beats the served cnn.onnx on validation, and then becomes it. Otherwise
its figures are recorded all the same and exports/ is left as it is.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from exports import EXPORTS_DIR
from training.cnn import LogitAveraged, count_parameters
from training.cnn_from_export import classifier_from_export
from training.export_cnn import check_parity, export_classifier, read_metadata, record_parity, served_default
from training.scenes import DataError, load_scenes
from training.train_cnn import DEFAULT_DATA, load_classifier, logits_of, saw_validation

BUDGET = 3_000_000  # issue #10: at most 3M parameters in the served network


def subsets(logits: dict[str, torch.Tensor], params: dict[str, int], labels: torch.Tensor, budget: int) -> list[dict]:
    """Validation accuracy and loss of the mean logits of every non-empty subset within the budget, best first."""
    rows = []
    for size in range(1, len(logits) + 1):
        for members in itertools.combinations(logits, size):
            total = sum(params[m] for m in members)
            if total > budget:
                continue
            mean = torch.stack([logits[m] for m in members]).mean(0)
            rows.append({
                "members": list(members), "params": total,
                "val_acc": (mean.argmax(1) == labels).float().mean().item(),
                "val_loss": F.cross_entropy(mean, labels).item(),
            })  # fmt: skip
    return sorted(rows, key=lambda row: (-row["val_acc"], row["val_loss"]))


def choose(rows: list[dict]) -> dict:
    """The best subset of two or more members (rows come best first)."""
    ensembles = [row for row in rows if len(row["members"]) > 1]
    if not ensembles:
        raise ValueError("no two candidates fit the parameter budget together")
    return ensembles[0]


def shared_errors(logits: dict[str, torch.Tensor], labels: torch.Tensor, members: list[str]) -> dict:
    """How many validation images each member gets wrong, and how many of them every member gets wrong: an
    ensemble can only mend the mistakes its members do not share."""
    wrong = {m: set((logits[m].argmax(1) != labels).nonzero().flatten().tolist()) for m in members}
    return {"errors": {m: len(w) for m, w in wrong.items()}, "shared_by_all": len(set.intersection(*wrong.values()))}


def selection_table(rows: list[dict], budget: int, images: int, errors: dict) -> str:
    lines = [
        f"The mean logits of every subset of the candidates within {budget:,} parameters, on the validation split "
        f"({images:,} images), best first:",
        "",
        "| members | params | val acc | val loss |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' + '.join(r['members'])} | {r['params']:,} | {r['val_acc']:.4f} | {r['val_loss']:.4f} |"
              for r in rows]  # fmt: skip
    counts = ", ".join(f"{m} {n}" for m, n in errors["errors"].items())
    lines += ["", f"Validation errors of the chosen members: {counts}; {errors['shared_by_all']} shared by all."]
    return "\n".join(lines) + "\n"


def source(name: str, runs: Path, results: Path, exports: Path) -> Path | None:
    """Where a finished run's weights are: its best.pt, else the export of exports/ that is this run (same
    train_command), so that a served network joins on a machine without its checkpoint; None if neither."""
    metrics_path, best_path = results / name / "metrics.json", runs / name / "best.pt"
    if best_path.exists():
        return best_path
    if not metrics_path.exists():
        return None
    command = json.loads(metrics_path.read_text())["train_command"]
    return next((p for p in sorted(exports.glob("cnn-*.onnx")) if read_metadata(p)["train_command"] == command), None)


def load_candidate(name: str, runs: Path, results: Path, exports: Path, fingerprint: str,
                   val_images: np.ndarray) -> tuple[torch.nn.Module, dict]:  # fmt: skip
    """A finished run's classifier and its metrics, from its `source` (a classifier rebuilt from an export is
    checked against ONNX Runtime on `val_images`). SystemExit naming what is missing."""
    metrics_path, best_path = results / name / "metrics.json", runs / name / "best.pt"
    if not metrics_path.exists():
        raise SystemExit(f"error: {metrics_path} not found: train the run first (make train-{name})")
    metrics = json.loads(metrics_path.read_text())
    if saw_validation(metrics):
        raise SystemExit(f"error: {name} was fitted on the validation split too (--train-on-val): it cannot be "
                         "chosen on it")  # fmt: skip
    if metrics["data_sha256"] != fingerprint:
        raise SystemExit(f"error: {name} was trained on other data (data_sha256 {metrics['data_sha256'][:12]}...)")
    path = source(name, runs, results, exports)
    if path is None:
        raise SystemExit(f"error: {best_path} not found, nor an export of that run in {exports}: train the run first "
                         f"(make train-{name})")  # fmt: skip
    if path == best_path:
        return load_classifier(best_path), metrics
    model = classifier_from_export(path, metrics["config"]["network"])
    check_parity(model, path, val_images)
    print(f"{name}: rebuilt from {path} (no {best_path} here)")
    return model, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", required=True,
                        help="finished runs (runs/cnn/NAME/best.pt, else the export of that run in --out)")  # fmt: skip
    parser.add_argument("--name", default="ensemble", help="the export: exports/cnn-NAME.onnx (default: ensemble)")
    parser.add_argument("--budget", type=int, default=BUDGET, help="most parameters of the whole ensemble")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--runs-dir", default="runs/cnn")
    parser.add_argument("--results", default="results/cnn")
    parser.add_argument("--out", default=str(EXPORTS_DIR))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--missing", action="store_true",
                        help="print the candidates with no checkpoint and no export, to train first")  # fmt: skip
    args = parser.parse_args(argv)
    if args.missing:
        where = Path(args.runs_dir), Path(args.results), Path(args.out)
        print(" ".join(name for name in dict.fromkeys(args.candidates) if source(name, *where) is None))
        return
    if len(set(args.candidates)) < 2:
        raise SystemExit("error: an ensemble needs two or more candidates")
    torch.set_num_threads(args.threads)
    try:
        data = load_scenes(args.data)
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    runs, results, out, fingerprint = Path(args.runs_dir), Path(args.results), Path(args.out), data.fingerprint()
    loaded = {name: load_candidate(name, runs, results, out, fingerprint, data.images["val"])
              for name in dict.fromkeys(args.candidates)}  # fmt: skip
    split = {s: (torch.from_numpy(data.images[s]), torch.from_numpy(data.labels[s])) for s in ("val", "test")}
    logits = {name: logits_of(model, split["val"][0]) for name, (model, _) in loaded.items()}
    params = {name: count_parameters(model) for name, (model, _) in loaded.items()}
    rows = subsets(logits, params, split["val"][1], args.budget)
    try:
        best = choose(rows)
    except ValueError as error:
        raise SystemExit(f"error: {error} ({args.budget:,})") from None
    print(f"chosen on validation: {' + '.join(best['members'])} ({best['params']:,} parameters)")

    ensemble = LogitAveraged([loaded[m][0] for m in best["members"]]).eval()
    test_images, test_labels = split["test"]
    test_acc = (logits_of(ensemble, test_images).argmax(1) == test_labels).float().mean().item()
    normalize = loaded[best["members"][0]][0].normalize
    for member in best["members"]:  # one preprocessing for the whole graph: the members must share it
        other = loaded[member][0].normalize
        assert torch.equal(other.mean, normalize.mean) and torch.equal(other.std, normalize.std), member
    command = "python -m training.ensemble_cnn " + shlex.join(sys.argv[1:] if argv is None else argv)
    members = [
        {key: loaded[m][1][key] for key in ("name", "params", "val_acc", "test_acc", "train_command")}
        for m in best["members"]
    ]
    served = read_metadata(out / "cnn.onnx") if (out / "cnn.onnx").exists() else None
    served_name, parity = (served["name"] if served else None), None
    if served is None or best["val_acc"] > served["metrics"]["val_acc"]:
        parity = export_classifier(
            ensemble, out / f"cnn-{args.name}.onnx", data, normalize, name=args.name, params=best["params"],
            metrics={"val_acc": best["val_acc"], "test_acc": test_acc}, data_sha256=fingerprint,
            train_command=command, members=members,
        )  # fmt: skip
        record_parity(results, args.name, parity)
        served_name = served_default(out)
    else:
        print(f"not exported: validation accuracy {best['val_acc']:.4f} does not beat the served cnn.onnx "
              f"({served['name']}, {served['metrics']['val_acc']:.4f})")  # fmt: skip
    errors = shared_errors(logits, split["val"][1], best["members"])
    summary = {"name": args.name, "params": best["params"], "members": members, "val_acc": best["val_acc"],
               "val_loss": best["val_loss"], "val_errors": errors, "test_acc": test_acc, "exported": parity is not None,
               "parity": parity, "served_default": served_name, "budget": args.budget, "train_command": command,
               "subsets": rows}  # fmt: skip
    (results / args.name).mkdir(parents=True, exist_ok=True)
    (results / args.name / "selection.md").write_text(selection_table(rows, args.budget, len(split["val"][1]), errors))
    (results / args.name / "selection.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{args.name}: val_acc {best['val_acc']:.4f} test_acc {test_acc:.4f}; served: {served_name}")


if __name__ == "__main__":
    main()
