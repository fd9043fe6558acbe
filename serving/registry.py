"""The models a server runs: every export in exports/, loaded and checked once at startup.

Clients choose among them by name; nothing a client sends is ever used as a path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from exports import EXPORTS_DIR
from exports.metadata import MetadataError
from exports.runtime import speller_prefixes
from serving.classifier import SceneClassifier
from serving.speller import Speller

REQUIRED_FILES = (
    "cnn.onnx", "cnn-vanilla.onnx", "cnn-bn-gap.onnx",
    "p2g-attention.encoder.onnx", "p2g-attention.decoder.onnx",
    "p2g-vanilla.encoder.onnx", "p2g-vanilla.decoder.onnx",
)  # fmt: skip


class StartupError(Exception):
    """An export is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class Models:
    classifiers: dict[str, SceneClassifier]
    spellers: dict[str, Speller]
    default_classifier: str
    default_speller: str

    def describe(self) -> dict:
        return {
            "classifiers": [c.describe() for c in self.classifiers.values()],
            "spellers": [s.describe() for s in self.spellers.values()],
            "default_classifier": self.default_classifier,
            "default_speller": self.default_speller,
        }


def _load(kind, path: Path, threads: int | None, name: str | None):
    try:
        model = kind(path, threads)
    except MetadataError as error:
        raise StartupError(str(error)) from None
    except Exception as error:  # onnxruntime reports unreadable files with several exception types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StartupError(f"{path}: cannot load ONNX model ({first_line})") from None
    if name is not None and model.name != name:
        raise StartupError(f"{path}: metadata name {model.name!r} disagrees with the file name ({name!r})")
    return model


def load_models(
    directory: Path | None = None, classifier_threads: int | None = None, speller_threads: int | None = None
) -> Models:
    """Every export of the directory (SCENESPELL_EXPORTS, else exports/), each session on the ONNX Runtime
    intra-op threads of its kind (None: ONNX Runtime's default)."""
    directory = Path(directory or os.environ.get("SCENESPELL_EXPORTS") or EXPORTS_DIR)
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise StartupError(f"{directory / missing[0]}: missing (needed: {', '.join(missing)}); run `make export`")
    classifiers = {}
    for path in sorted(directory.glob("cnn-*.onnx")):
        name = path.name.removeprefix("cnn-").removesuffix(".onnx")
        classifiers[name] = _load(SceneClassifier, path, classifier_threads, name)
    default = _load(SceneClassifier, directory / "cnn.onnx", classifier_threads, None)
    classifiers.setdefault(default.name, default)
    spellers = {}
    for name, prefix in speller_prefixes(directory).items():
        spellers[name] = _load(Speller, prefix, speller_threads, name)
    # The default answers every request alike, so it is chosen among the spellers that ignore stress digits: one
    # reading them spells worse when a client leaves them out (results/p2g/results.md); those serve by name.
    stressless = [s for s in spellers.values() if not s.metadata["stress"]] or list(spellers.values())
    best_speller = min(stressless, key=lambda s: s.metadata["metrics"]["valid"]["cer"])
    return Models(classifiers, spellers, default.name, best_speller.name)
