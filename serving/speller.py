"""Speller: an exported P2G model on ONNX Runtime, from ARPAbet phonemes to spellings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exports import decoding
from exports.metadata import MetadataError, speller_symbols
from exports.runtime import SpellerGraphs
from serving.errors import InputError

DECODINGS = ("greedy", "nucleus", "beam")
LENGTH_PENALTY = 0.6  # GNMT alpha for beam search, unless the export names its own


class Speller:
    def __init__(self, prefix: Path, threads: int | None = None):
        self.graphs = SpellerGraphs(prefix, threads)
        self.metadata = self.graphs.metadata
        self.name: str = self.metadata["name"]
        self.phonemes: list[str] = self.metadata["phonemes"]
        self.graphemes: list[str] = self.metadata["graphemes"]
        self.special = self.metadata["special_tokens"]
        self.index = {symbol: i for i, symbol in enumerate(self.phonemes) if i != self.special["phoneme_pad"]}
        self.max_input_length = int(self.metadata["max_input_length"])
        self.max_output_length = int(self.metadata["max_output_length"])
        self._check_graphs()

    def _check_graphs(self) -> None:
        """Refuse at startup graphs that disagree with the metadata, rather than fail requests later."""
        g = self.graphs
        encoder_inputs = [(i.name, i.type) for i in g.encoder.get_inputs()]
        widths = {o.name: o.shape[-1] for o in g.decoder.get_outputs()}
        unfed = sorted(set(g.decoder_inputs) - set(g.encoder_outputs))
        problems = [
            f"encoder inputs {encoder_inputs}, expected [('phonemes', 'tensor(int64)')]"
            if encoder_inputs != [("phonemes", "tensor(int64)")] else "",
            "" if "token" in {i.name for i in g.decoder.get_inputs()} else "decoder has no input 'token'",
            "decoder has no output 'log_probs'" if "log_probs" not in widths else "",
            f"decoder log_probs has {widths['log_probs']} letters, metadata 'graphemes' {len(self.graphemes)}"
            if isinstance(widths.get("log_probs"), int) and widths["log_probs"] != len(self.graphemes) else "",
            f"decoder inputs {unfed} are not encoder outputs" if unfed else "",
        ]  # fmt: skip
        if any(problems):
            found = "; ".join(p for p in problems if p)
            raise MetadataError(
                f"{g.decoder_path}: graphs disagree with the metadata of {g.encoder_path.name}: {found}"
            )

    def parse(self, phonemes: str | list[str]) -> list[str]:
        """ARPAbet symbols, separated by spaces or as a list; case-insensitive; stress digits dropped unless the
        model reads stress."""
        symbols = phonemes.split() if isinstance(phonemes, str) else [s.strip() for s in phonemes]
        if not symbols or any(not s for s in symbols):
            raise InputError("field 'phonemes' is empty" if not symbols else "field 'phonemes' has an empty symbol")
        if len(symbols) > self.max_input_length:
            raise InputError(f"field 'phonemes' has {len(symbols)} symbols, over the limit of {self.max_input_length}")
        normalized = speller_symbols(symbols, self.metadata["stress"])
        unknown = sorted({raw for raw, s in zip(symbols, normalized) if s not in self.index})
        if unknown:
            raise InputError(f"field 'phonemes' has unknown ARPAbet symbols: {', '.join(unknown)}")
        return normalized

    def spell(
        self,
        symbols: list[str],
        decoding_name: str = "greedy",
        n: int = 1,
        top_p: float = 0.8,
        temperature: float = 1.0,
        seed: int | None = None,
        beam_size: int | None = None,
    ) -> tuple[list[str], list[float]]:
        """n spellings of one word and their log-probabilities, in one batched pass. Beam search returns
        the n best distinct spellings, best first, from a beam of beam_size (default max(n, 5))."""
        if decoding_name not in DECODINGS:
            raise InputError(f"field 'decoding' must be one of {', '.join(DECODINGS)}")
        if decoding_name == "greedy" and n != 1:
            raise InputError("field 'n' must be 1 with greedy decoding (use 'nucleus' or 'beam' for several)")
        beam_size = beam_size or max(n, 5)
        if decoding_name == "beam" and n > beam_size:
            raise InputError(f"field 'n' ({n}) must not exceed field 'beam_size' ({beam_size})")
        state = self.graphs.initial_state(np.array([[self.index[s] for s in symbols]], dtype=np.int64))
        bos, eos = self.special["bos"], self.special["eos"]
        if decoding_name == "greedy":
            sequences, scores = decoding.greedy(self.graphs.step, state, bos, eos, self.max_output_length)
        elif decoding_name == "beam":
            alpha = self.metadata.get("length_penalty", LENGTH_PENALTY)
            beams, beam_scores = decoding.beam_search(
                self.graphs.step, state, bos, eos, self.max_output_length, beam_size, n, alpha
            )
            sequences, scores = beams[0], beam_scores[0]
        else:
            samples, sample_scores = decoding.nucleus(
                self.graphs.step, state, bos, eos, self.max_output_length, n, top_p, temperature, seed
            )
            sequences, scores = samples[0], sample_scores[0]
        return [self.word(s) for s in sequences], [float(s) for s in scores]

    def word(self, tokens: list[int]) -> str:
        return "".join(self.graphemes[t] for t in tokens if t not in self.special.values())

    def describe(self) -> dict:
        m = self.metadata
        return {"name": self.name, "params": m["params"], "metrics": m["metrics"], "phonemes": list(self.index),
                "graphemes": [g for i, g in enumerate(self.graphemes) if i not in self.special.values()],
                "decodings": list(DECODINGS), "max_input_length": self.max_input_length, "stress": m["stress"],
                "data_sha256": m["data_sha256"], "train_command": m["train_command"],
                "files": [self.graphs.encoder_path.name, self.graphs.decoder_path.name]}  # fmt: skip
