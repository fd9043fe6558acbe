"""Metadata that every export carries in its ONNX `metadata_props`, one JSON value per key.

Training writes it (`embed`, with the onnx package); serving reads it from an ONNX Runtime session
(`from_session`). `exports/README.md` documents every key.
"""

from __future__ import annotations

import json

FORMAT_VERSION = 1

CLASSIFIER_KEYS = ("kind", "name", "class_names", "params", "metrics", "data_sha256", "train_command", "preprocessing")
SPELLER_KEYS = (
    "kind", "name", "part", "phonemes", "graphemes", "special_tokens", "stress", "max_input_length",
    "max_output_length", "params", "metrics", "data_sha256", "train_command",
)  # fmt: skip
REQUIRED = {"classifier": CLASSIFIER_KEYS, "speller": SPELLER_KEYS}


class MetadataError(ValueError):
    """An export's metadata is missing keys or does not fit the code that reads it."""


def check(metadata: dict, source: str) -> dict:
    kind = metadata.get("kind")
    if kind not in REQUIRED:
        raise MetadataError(f"{source}: metadata 'kind' is {kind!r}, expected one of {sorted(REQUIRED)}")
    missing = [key for key in REQUIRED[kind] if key not in metadata]
    if missing:
        raise MetadataError(f"{source}: metadata lacks {', '.join(missing)}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise MetadataError(
            f"{source}: metadata format_version {metadata.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    return metadata


def strip_stress(symbol: str) -> str:
    """An ARPAbet symbol without its stress digit: AE1 -> AE."""
    return symbol.rstrip("012")


def speller_symbols(symbols, stress: bool) -> list[str]:
    """ARPAbet symbols as a speller with this `stress` metadata reads them: upper case, stress digits (0, 1, 2)
    removed unless the speller reads stress."""
    upper = [symbol.upper() for symbol in symbols]
    return upper if stress else [strip_stress(symbol) for symbol in upper]


def embed(model, metadata: dict) -> None:
    """Write metadata into an onnx.ModelProto's metadata_props (replacing what was there)."""
    metadata = {"format_version": FORMAT_VERSION, **metadata}
    check(metadata, "export")
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)


def decode(raw: dict[str, str], source: str) -> dict:
    """Metadata from its raw key -> JSON string form, decoded and checked."""
    try:
        metadata = {key: json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError as error:
        raise MetadataError(f"{source}: metadata is not JSON ({error})") from error
    return check(metadata, source)


def from_session(session, source: str) -> dict:
    """Metadata of an onnxruntime.InferenceSession, decoded and checked."""
    return decode(session.get_modelmeta().custom_metadata_map, source)


def from_model(model, source: str) -> dict:
    """Metadata of an onnx.ModelProto (what `embed` wrote), decoded and checked."""
    return decode({entry.key: entry.value for entry in model.metadata_props}, source)
