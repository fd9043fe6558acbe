"""Running exports with ONNX Runtime: sessions on the right execution provider, and the speller's two graphs
as a numpy step function for exports.decoding. Used by serving, and by training to check its exports."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from exports import metadata as export_metadata
from exports.decoding import State

NEXT_SUFFIX = "_next"


def providers() -> list[str]:
    """CUDA when this onnxruntime has it and a GPU answers, else CPU; named explicitly, so that
    onnxruntime-gpu on a machine without a GPU does not log CUDA errors."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and _gpu_present():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _gpu_present() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*")) and os.environ.get("CUDA_VISIBLE_DEVICES", "0") not in ("", "-1")


def load_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=providers())


def speller_prefixes(directory: Path) -> dict[str, Path]:
    """Every speller export in a directory, by name: `p2g-<name>.encoder.onnx` -> {name: directory/p2g-<name>}."""
    prefixes = (
        path.with_name(path.name.removesuffix(".encoder.onnx"))
        for path in sorted(Path(directory).glob("p2g-*.encoder.onnx"))
    )
    return {prefix.name.removeprefix("p2g-"): prefix for prefix in prefixes}


class SpellerGraphs:
    """The encoder and decoder-step graphs of one speller export, `<prefix>.encoder.onnx` and `<prefix>.decoder.onnx`.

    `initial_state` runs the encoder; `step` runs one decoder step. Decoder inputs are fed from the state
    by name; a decoder output named `x_next` replaces state `x`.
    """

    def __init__(self, prefix: Path, threads: int | None = None):
        self.encoder_path = prefix.with_name(prefix.name + ".encoder.onnx")
        self.decoder_path = prefix.with_name(prefix.name + ".decoder.onnx")
        self.encoder = load_session(self.encoder_path, threads)
        self.decoder = load_session(self.decoder_path, threads)
        self.metadata = export_metadata.from_session(self.encoder, str(self.encoder_path))
        self.phoneme_index = {symbol: i for i, symbol in enumerate(self.metadata["phonemes"])}
        self.encoder_outputs = [o.name for o in self.encoder.get_outputs()]
        self.decoder_inputs = [i.name for i in self.decoder.get_inputs() if i.name != "token"]
        self.decoder_outputs = [o.name for o in self.decoder.get_outputs()]
        self.updates = [name for name in self.decoder_outputs if name.endswith(NEXT_SUFFIX)]

    def phoneme_ids(self, pronunciations) -> np.ndarray:
        """Pronunciations (a sequence of ARPAbet symbols each) as the encoder's input, int64 [B, T], 0 = padding;
        symbols are read as the metadata's `stress` says (`exports.metadata.speller_symbols`)."""
        stress = self.metadata["stress"]
        rows = [[self.phoneme_index[s] for s in export_metadata.speller_symbols(p, stress)] for p in pronunciations]
        ids = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
        for row, symbols in enumerate(rows):
            ids[row, : len(symbols)] = symbols
        return ids

    def initial_state(self, phoneme_ids: np.ndarray) -> State:
        """phoneme_ids int64 [B, T], 0 = padding."""
        values = self.encoder.run(self.encoder_outputs, {"phonemes": phoneme_ids})
        return dict(zip(self.encoder_outputs, values))

    def step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        feed = {"token": tokens, **{name: state[name] for name in self.decoder_inputs}}
        values = dict(zip(self.decoder_outputs, self.decoder.run(self.decoder_outputs, feed)))
        updated = {name[: -len(NEXT_SUFFIX)]: values[name] for name in self.updates}
        return values["log_probs"], {**state, **updated}
