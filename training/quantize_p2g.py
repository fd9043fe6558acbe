"""An int8 copy of an exported speller, for speed on CPU: ONNX Runtime's dynamic quantization.

    python -m training.quantize_p2g attention-ensemble     # -> exports/p2g-attention-ensemble-int8.*.onnx
    python -m training.quantize_p2g attention-pair --replace   # the copy takes the place of its source

The weights of every MatMul and LSTM become int8 (per output channel), and activations are quantized on the
fly at each call, so no calibration data is needed. The graphs keep the speller contract (exports/README.md),
so serving and the shared decoding run the copy as they run any speller, selectable by name. Its metadata is
its source's, renamed, with metrics of its own (rescored on valid and test, as ensembles are) and the number of
test words it spells as its source does (results/p2g/NAME-int8/metrics.json).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from exports import EXPORTS_DIR
from exports import metadata as export_metadata
from exports.runtime import SpellerGraphs
from training.p2g_compare import EVALUATION_BATCH, decode_split, score, without_stress_rates
from training.p2g_data import load_splits, spellings_by_key

SUFFIX = "-int8"


def quantize(source: Path, out: Path, command: str) -> dict:
    """Write the int8 copy of export `source` as export `out`; returns its metadata (metrics still empty)."""
    metadata = {}
    for part in ("encoder", "decoder"):
        path = source.with_name(f"{source.name}.{part}.onnx")
        original = export_metadata.from_model(onnx.load(str(path)), str(path))
        metadata = {
            **original,
            "name": out.name.removeprefix("p2g-"),
            "metrics": {},
            "train_command": command,
            "quantized_from": {key: original[key] for key in ("name", "metrics", "train_command")},
        }
        with tempfile.TemporaryDirectory() as work:
            quantized = Path(work, path.name)
            quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, per_channel=True)
            model = onnx.load(str(quantized))
        export_metadata.embed(model, metadata)  # replaces what quantization wrote (it adds a key of its own)
        onnx.save(model, str(out.with_name(f"{out.name}.{part}.onnx")))
    return metadata


def same_spellings(a: SpellerGraphs, b: SpellerGraphs, pairs) -> int:
    found_a, _ = decode_split(a, pairs, "greedy", EVALUATION_BATCH)
    found_b, _ = decode_split(b, pairs, "greedy", EVALUATION_BATCH)
    return sum(x == y for x, y in zip(found_a, found_b))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("speller", help="an exported speller: exports/p2g-SPELLER.*")
    parser.add_argument("--exports", default=str(EXPORTS_DIR))
    parser.add_argument("--results", default="results/p2g")
    parser.add_argument("--replace", action="store_true", help="remove the source export once its copy is scored")
    args = parser.parse_args(argv)
    source = Path(args.exports) / f"p2g-{args.speller}"
    if not source.with_name(source.name + ".encoder.onnx").exists():
        raise SystemExit(f"error: no speller export {source}.encoder.onnx")
    if args.speller.endswith(SUFFIX):
        raise SystemExit(f"error: {args.speller} is already a quantized copy")
    out = source.with_name(source.name + SUFFIX)
    command = "python -m training.quantize_p2g " + shlex.join(sys.argv[1:] if argv is None else argv)
    metadata = quantize(source, out, command)
    splits = load_splits("cmudict")
    spellings = spellings_by_key(splits)
    metadata["metrics"] = score(SpellerGraphs(out), splits, spellings)
    for part in ("encoder", "decoder"):
        path = out.with_name(f"{out.name}.{part}.onnx")
        model = onnx.load(str(path))
        export_metadata.embed(model, {**metadata, "part": part})
        onnx.save(model, str(path))
    test = splits["test"]
    same = same_spellings(SpellerGraphs(source), SpellerGraphs(out), test)
    if args.replace:
        for part in ("encoder", "decoder"):
            source.with_name(f"{source.name}.{part}.onnx").unlink()
    summary = {"name": metadata["name"], "params": metadata["params"], "quantized_from": args.speller,
               "valid": metadata["metrics"]["valid"], "test": metadata["metrics"]["test"],
               **without_stress_rates(SpellerGraphs(out), splits, spellings),
               "test_spellings_as_source": {"words": len(test), "identical_spellings": same},
               "train_command": command}  # fmt: skip
    results = Path(args.results) / metadata["name"]
    results.mkdir(parents=True, exist_ok=True)
    (results / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
