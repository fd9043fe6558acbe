"""Export the best run of each scene network to exports/, and the best overall as the served cnn.onnx.

    python -m training.export_cnn                      # picks runs from results/cnn/*/metrics.json
    python -m training.export_cnn --networks resnet    # only some networks; cnn.onnx is still the best of all

After export, ONNX Runtime must agree with PyTorch within 1e-4 on the logits of real images and on the
label of every test image; otherwise the export is refused.

Networks of our own (not the two reference ones) may be exported with test-time flip averaging folded
into the graph: the mean of the logits of the image and of its mirror image. It doubles the work per
image, so it is kept only when it raises validation accuracy by at least MIN_FLIP_GAIN; the metadata's
metrics are those of the exported graph, and say whether it averages flips and what it scored without.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch

from exports import EXPORTS_DIR
from exports.metadata import from_model
from exports.runtime import load_session
from training.cnn import FlipAveraged, SceneClassifier, count_parameters
from training.onnx_export import export
from training.scenes import DataError, load_scenes
from training.sweep_cnn import NETWORKS as REFERENCE_NETWORKS
from training.train_cnn import DEFAULT_DATA, load_classifier, saw_validation

TOLERANCE = 1e-4
# Flip averaging doubles the work per image; fold it in only for a gain above noise: 0.002 is three
# validation images of the npz (a gain of one image, 0.0007, measured, is not worth half the throughput).
MIN_FLIP_GAIN = 0.002


def best_runs(results: Path) -> dict[str, dict]:
    """network -> metrics of its run with the best validation accuracy (of runs that did not fit on it)."""
    best: dict[str, dict] = {}
    for path in sorted(results.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        network = metrics["config"]["network"]
        if saw_validation(metrics):
            continue
        if network not in best or metrics["val_acc"] > best[network]["val_acc"]:
            best[network] = metrics
    return best


def check_parity(model: torch.nn.Module, path: Path, images: np.ndarray) -> dict:
    """Largest logit difference on the first 256 images, and label agreement over all of `images`."""
    onnx_session = load_session(path, torch.get_num_threads())
    with torch.inference_mode():
        torch_logits = torch.cat([model(torch.from_numpy(images[i : i + 256])) for i in range(0, len(images), 256)])
    onnx_logits = np.concatenate(
        [onnx_session.run(["logits"], {"images": images[i : i + 256]})[0] for i in range(0, len(images), 256)]
    )
    diff = float(np.abs(torch_logits.numpy()[:256] - onnx_logits[:256]).max())
    agree = int((torch_logits.argmax(1).numpy() == onnx_logits.argmax(1)).sum())
    report = {"max_abs_logit_diff": diff, "labels_agree": agree, "images": len(images)}
    if diff > TOLERANCE or agree != len(images):
        raise SystemExit(f"error: {path}: ONNX Runtime and PyTorch disagree: {report}")
    return report


def with_flip_averaging(model: SceneClassifier, metrics: dict) -> tuple[torch.nn.Module, dict]:
    """The graph to export and its metrics: flip averaging when training measured that it raises validation
    accuracy by MIN_FLIP_GAIN or more (never for the reference networks, which are exported as they are)."""
    scores = {"val_acc": metrics["val_acc"], "test_acc": metrics["test_acc"], "best_epoch": metrics["best_epoch"]}
    flip = metrics.get("flip_averaging")
    if metrics["config"]["network"] in REFERENCE_NETWORKS or flip is None:
        return model, scores
    if flip["val_acc"] < metrics["val_acc"] + MIN_FLIP_GAIN:
        return model, scores | {"flip_averaging": False}
    return FlipAveraged(model).eval(), scores | {
        "val_acc": flip["val_acc"], "test_acc": flip["test_acc"], "flip_averaging": True,
        "val_acc_without_flip": metrics["val_acc"], "test_acc_without_flip": metrics["test_acc"],
    }  # fmt: skip


def export_classifier(graph: torch.nn.Module, out: Path, data, normalize, *, name: str, params: int, metrics: dict,
                      data_sha256: str, train_command: str, **extra) -> dict:  # fmt: skip
    """Export `graph` (uint8 NHWC images -> logits) to `out` with the classifier metadata (exports/README.md;
    `extra` keys go in too), then check ONNX Runtime against it: the parity report, or SystemExit."""
    test_images = data.images["test"]
    size = test_images.shape[1:3]
    export(
        graph,
        (torch.from_numpy(test_images[:2]),),
        out,
        inputs=["images"],
        outputs=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        metadata={
            "kind": "classifier",
            "name": name,
            "class_names": list(data.class_names),
            "params": params,
            "metrics": metrics,
            "data_sha256": data_sha256,
            "train_command": train_command,
            **extra,
            "preprocessing": {
                "input": "images", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                "height": int(size[0]), "width": int(size[1]), "resample": "bicubic", "keep_aspect": False,
                "normalization": "inside the graph",
                "mean": normalize.mean.flatten().tolist(), "std": normalize.std.flatten().tolist(),
            },
        },
    )  # fmt: skip
    return check_parity(graph, out, test_images)


def export_run(metrics: dict, runs: Path, out: Path, data) -> dict:
    model = load_classifier(runs / metrics["name"] / "best.pt")
    params = count_parameters(model)
    assert params == metrics["params"], (params, metrics["params"])
    graph, scores = with_flip_averaging(model, metrics)
    parity = export_classifier(
        graph, out, data, model.normalize, name=metrics["config"]["network"], params=params, metrics=scores,
        data_sha256=metrics["data_sha256"], train_command=metrics["train_command"],
    )  # fmt: skip
    print(
        f"{out}: {metrics['name']} val_acc {scores['val_acc']:.4f} test_acc {scores['test_acc']:.4f}; parity {parity}"
    )
    return parity


def read_metadata(path: Path) -> dict:
    """The metadata of an exported classifier, read with the onnx package (no session)."""
    return from_model(onnx.load(str(path)), str(path))


def served_default(out: Path) -> str:
    """Copy the best classifier of `out` by validation accuracy (its metadata's) to cnn.onnx; its name."""
    candidates = {path: read_metadata(path) for path in sorted(out.glob("cnn-*.onnx"))}
    best = max(candidates, key=lambda path: candidates[path]["metrics"]["val_acc"])
    shutil.copyfile(best, out / "cnn.onnx")
    print(f"{out / 'cnn.onnx'}: {candidates[best]['name']} (best validation accuracy of {len(candidates)})")
    return candidates[best]["name"]


def record_parity(results: Path, name: str, report: dict) -> None:
    """results/cnn/parity.json: each export's agreement between ONNX Runtime and PyTorch, by name."""
    path = results / "parity.json"
    parity = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(parity | {name: report}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--runs-dir", default="runs/cnn")
    parser.add_argument("--results", default="results/cnn")
    parser.add_argument("--out", default=str(EXPORTS_DIR))
    parser.add_argument("--networks", nargs="+", help="export only these networks (default: every one trained)")
    args = parser.parse_args(argv)
    try:
        data = load_scenes(args.data)
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    best = best_runs(Path(args.results))
    if not best:
        raise SystemExit(f"error: no finished runs in {args.results}/*/metrics.json; run `make train-cnn` first")
    out = Path(args.out)
    trained = [n for n, m in best.items() if (Path(args.runs_dir) / m["name"] / "best.pt").exists()]
    for network in sorted(set(best) - set(trained)) if not args.networks else []:
        print(f"note: no checkpoint of {best[network]['name']} in {args.runs_dir}; cnn-{network}.onnx left as it is")
    for network in args.networks or trained:
        if network not in best:
            raise SystemExit(f"error: no finished run of {network!r} in {args.results}/*/metrics.json")
        parity = export_run(best[network], Path(args.runs_dir), out / f"cnn-{network}.onnx", data)
        record_parity(Path(args.results), network, parity)
    served_default(out)


if __name__ == "__main__":
    main()
