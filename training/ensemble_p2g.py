"""A speller made of several exported spellers: at every step, the mean of their probabilities.

    python -m training.ensemble_p2g --name attention-ensemble \
        --candidates attention-deep attention-large attention-deep-seed1 transformer

Built from exports/ alone, so it needs no checkpoint: the members' encoder graphs go side by side into one
encoder graph and their decoder steps into one step graph, every name prefixed `m0_`, `m1_`, ... The step's
`log_probs` is log(mean_i exp(log_probs_i)), and each member's `x_next` outputs stay its own, so the result
follows the speller contract (exports/README.md) and the service and the shared decoding run it as they run
any speller.

Which candidates join is chosen on the validation split: every subset of them is scored by greedy CER
(results/p2g/NAME/selection.md), the best is exported as exports/p2g-NAME.*, and only then is the test split
scored, once, for the metadata and results/p2g/NAME/metrics.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from exports import EXPORTS_DIR
from exports import metadata as export_metadata
from exports.runtime import SpellerGraphs
from training.p2g_compare import greedy_rates, score, without_stress_rates
from training.p2g_data import load_splits, spellings_by_key

# What every member must share: the ensemble reads one vocabulary, one input limit and one lexicon.
SHARED_KEYS = (
    "phonemes", "graphemes", "special_tokens", "stress", "max_input_length", "max_output_length", "data_sha256",
    "data",
)  # fmt: skip


def member_prefix(i: int) -> str:
    return f"m{i}_"


def side_by_side(members: list[onnx.ModelProto], shared_inputs: list[str], outputs: list[onnx.ValueInfoProto],
                 extra_nodes: list[onnx.NodeProto]) -> onnx.ModelProto:  # fmt: skip
    """One graph holding every member (already under its prefix); the shared inputs are fed to all of them."""
    opsets = {tuple((o.domain, o.version) for o in m.opset_import) for m in members}
    if len(opsets) != 1:
        raise ValueError(f"members use different opsets: {sorted(opsets)}")
    nodes, initializers, value_info, inputs = [], [], [], {}
    for i, member in enumerate(members):
        graph = member.graph
        for name in shared_inputs:  # the shared input, under the name this member's nodes read
            nodes.append(helper.make_node("Identity", [name], [member_prefix(i) + name], name=f"feed_{i}_{name}"))
        for graph_input in graph.input:
            name = graph_input.name.removeprefix(member_prefix(i))
            if name in shared_inputs:
                inputs.setdefault(name, onnx.ValueInfoProto(name=name, type=graph_input.type))
            else:
                inputs[graph_input.name] = graph_input
        nodes += graph.node
        initializers += graph.initializer
        value_info += graph.value_info
    graph = helper.make_graph(nodes + extra_nodes, "ensemble", list(inputs.values()), outputs, initializers,
                              value_info=value_info)  # fmt: skip
    model = helper.make_model(graph, opset_imports=members[0].opset_import, ir_version=members[0].ir_version)
    onnx.checker.check_model(model)
    return model


def mean_probability(log_probs: list[str], out: str) -> list[onnx.NodeProto]:
    """log(mean_i exp(x_i)) of the members' log-probabilities, shifted by their maximum so nothing underflows."""
    n = len(log_probs)
    nodes = [helper.make_node("Max", log_probs, ["ens_max"])]
    for i, name in enumerate(log_probs):
        nodes += [helper.make_node("Sub", [name, "ens_max"], [f"ens_shifted_{i}"]),
                  helper.make_node("Exp", [f"ens_shifted_{i}"], [f"ens_exp_{i}"])]  # fmt: skip
    log_n = helper.make_tensor("ens_log_n", onnx.TensorProto.FLOAT, [], [float(np.log(n))])
    nodes += [
        helper.make_node("Sum", [f"ens_exp_{i}" for i in range(n)], ["ens_sum"]),
        helper.make_node("Log", ["ens_sum"], ["ens_log_sum"]),
        helper.make_node("Constant", [], ["ens_log_n_value"], value=log_n),
        helper.make_node("Sub", ["ens_log_sum", "ens_log_n_value"], ["ens_log_mean"]),
        helper.make_node("Add", ["ens_max", "ens_log_mean"], [out]),
    ]
    return nodes


def load_members(prefixes: list[Path], part: str) -> list[onnx.ModelProto]:
    """The members' graphs of one part (encoder or decoder), each with its names under its member prefix."""
    paths = [p.with_name(f"{p.name}.{part}.onnx") for p in prefixes]
    return [onnx.compose.add_prefix(onnx.load(str(path)), member_prefix(i)) for i, path in enumerate(paths)]


def combine(prefixes: list[Path]) -> tuple[onnx.ModelProto, onnx.ModelProto, list[dict]]:
    """The ensemble's encoder and decoder-step graphs (no metadata yet) from the members' export prefixes,
    and each member's metadata."""
    encoders, decoders = load_members(prefixes, "encoder"), load_members(prefixes, "decoder")
    metadata = [export_metadata.from_model(m, str(p)) for m, p in zip(encoders, prefixes)]
    for key in SHARED_KEYS:
        if len({json.dumps(m.get(key), sort_keys=True) for m in metadata}) != 1:
            raise ValueError(f"members disagree on {key!r}: {', '.join(m['name'] for m in metadata)}")
    encoder = side_by_side(encoders, ["phonemes"], [o for m in encoders for o in m.graph.output], [])
    letters = len(metadata[0]["graphemes"])
    outputs = [helper.make_tensor_value_info("log_probs", onnx.TensorProto.FLOAT, ["batch", letters])]
    outputs += [o for m in decoders for o in m.graph.output if o.name.endswith("_next")]  # attention weights: left out
    log_probs = [member_prefix(i) + "log_probs" for i in range(len(decoders))]
    decoder = side_by_side(decoders, ["token"], outputs, mean_probability(log_probs, "log_probs"))
    return encoder, decoder, metadata


def save(encoder: onnx.ModelProto, decoder: onnx.ModelProto, metadata: dict, prefix: Path) -> None:
    for part, model in (("encoder", encoder), ("decoder", decoder)):
        export_metadata.embed(model, {**metadata, "part": part})
        onnx.save(model, str(prefix.with_name(f"{prefix.name}.{part}.onnx")))


def ensemble_metadata(name: str, members: list[dict], metrics: dict, command: str) -> dict:
    first = members[0]
    return {
        "kind": "speller",
        "name": name,
        **{key: first[key] for key in SHARED_KEYS},
        "params": sum(m["params"] for m in members),
        "metrics": metrics,
        "train_command": command,
        "config": {"ensemble": "mean probability per step", "members": [m["name"] for m in members]},
        "members": [{key: m[key] for key in ("name", "params", "metrics", "train_command")} for m in members],
    }


def build(name: str, prefixes: list[Path], out: Path, command: str, splits=None, spellings=None) -> SpellerGraphs:
    """Write the ensemble of `prefixes` as the export `out`; with splits, scored and its metrics in the metadata."""
    encoder, decoder, members = combine(prefixes)
    save(encoder, decoder, ensemble_metadata(name, members, {}, command), out)
    if splits is None:
        return SpellerGraphs(out)
    metrics = score(SpellerGraphs(out), splits, spellings)
    save(encoder, decoder, ensemble_metadata(name, members, metrics, command), out)
    return SpellerGraphs(out)


def selection_table(rows: list[dict]) -> str:
    lines = [
        "| members | params | valid CER | valid WER | valid homophone-aware WER | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: r["cer"]):
        lines.append(f"| {' + '.join(row['members'])} | {row['params']:,} | {row['cer']:.4f} | {row['wer']:.4f} "
                     f"| {row['homophone_wer']:.4f} | {row['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def select(candidates: list[str], exports: Path, splits, spellings, work: Path) -> list[dict]:
    """Greedy validation rates of every non-empty subset of the candidates (one alone is its own export)."""
    rows = []
    for size in range(1, len(candidates) + 1):
        for subset in itertools.combinations(candidates, size):
            began = time.perf_counter()
            if size == 1:
                graphs = SpellerGraphs(exports / f"p2g-{subset[0]}")
            else:
                graphs = build("candidate", [exports / f"p2g-{m}" for m in subset], work / "p2g-candidate", "")
            rates = greedy_rates(graphs, splits["valid"], spellings)
            rows.append({"members": list(subset), "params": graphs.metadata["params"], **rates,
                         "seconds": time.perf_counter() - began})  # fmt: skip
            print(f"{' + '.join(subset)}: valid CER {rates['cer']:.4f} WER {rates['wer']:.4f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the ensemble's name: exports/p2g-NAME.*")
    parser.add_argument("--candidates", nargs="+", required=True, help="exported spellers that may join")
    parser.add_argument("--exports", default=str(EXPORTS_DIR))
    parser.add_argument("--results", default="results/p2g")
    args = parser.parse_args(argv)
    exports, results = Path(args.exports), Path(args.results) / args.name
    missing = [c for c in args.candidates if not (exports / f"p2g-{c}.encoder.onnx").exists()]
    if missing:
        raise SystemExit(f"error: not in {exports}: {', '.join(missing)} (export them first: make export-p2g)")
    if len(set(args.candidates)) < 2:
        raise SystemExit("error: an ensemble needs two or more candidates")
    command = "python -m training.ensemble_p2g " + shlex.join(sys.argv[1:] if argv is None else argv)
    splits = load_splits("cmudict")
    spellings = spellings_by_key(splits)
    with tempfile.TemporaryDirectory() as work:
        rows = select(args.candidates, exports, splits, spellings, Path(work))
    best = min((r for r in rows if len(r["members"]) > 1), key=lambda r: r["cer"])
    print(f"chosen on validation: {' + '.join(best['members'])}")
    prefixes, out = [exports / f"p2g-{m}" for m in best["members"]], exports / f"p2g-{args.name}"
    graphs = build(args.name, prefixes, out, command, splits, spellings)
    metrics = graphs.metadata["metrics"]
    results.mkdir(parents=True, exist_ok=True)
    (results / "selection.md").write_text(
        f"Greedy decoding of the CMUdict validation split ({len(splits['valid']):,} pairs) by every subset of the "
        f"candidates, best first (seconds: building and decoding, on this machine):\n\n" + selection_table(rows)
    )
    summary = {"name": args.name, "params": graphs.metadata["params"], "members": best["members"],
               "valid": metrics["valid"], "test": metrics["test"], **without_stress_rates(graphs, splits, spellings),
               "train_command": command}  # fmt: skip
    (results / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
