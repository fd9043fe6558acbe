"""SceneClassifier: an exported scene CNN on ONNX Runtime, from image bytes to class probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exports import metadata as export_metadata
from exports.decoding import softmax
from exports.runtime import load_session
from serving.images import decode_image


class SceneClassifier:
    def __init__(self, path: Path, threads: int | None = None):
        self.path = path
        self.session = load_session(path, threads)
        self.metadata = export_metadata.from_session(self.session, str(path))
        self.name: str = self.metadata["name"]
        self.class_names: list[str] = self.metadata["class_names"]
        pre = self.metadata["preprocessing"]
        self.height, self.width = int(pre["height"]), int(pre["width"])
        self._check_graph()

    def _check_graph(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        expected = (1, ["images"], "tensor(uint8)", [self.height, self.width, 3], ["logits"], len(self.class_names))
        found = (len(inputs), [i.name for i in inputs], inputs[0].type, inputs[0].shape[1:],
                 [o.name for o in outputs], outputs[0].shape[1])  # fmt: skip
        if found != expected:
            raise export_metadata.MetadataError(f"{self.path}: graph {found} does not match its metadata {expected}")

    def preprocess(self, data: bytes) -> np.ndarray:
        """Image file bytes -> uint8 [H, W, 3] as the network was trained on."""
        return decode_image(data, self.width, self.height)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> probabilities [N, classes]."""
        (logits,) = self.session.run(["logits"], {"images": images})
        return softmax(logits.astype(np.float64))

    def answer(self, probabilities: np.ndarray) -> dict:
        best = int(probabilities.argmax())
        return {
            "label": self.class_names[best],
            "confidence": float(probabilities[best]),
            "probabilities": {name: float(p) for name, p in zip(self.class_names, probabilities)},
        }

    def describe(self) -> dict:
        m = self.metadata
        return {"name": self.name, "params": m["params"], "classes": self.class_names, "metrics": m["metrics"],
                "data_sha256": m["data_sha256"], "train_command": m["train_command"],
                "preprocessing": m["preprocessing"], "file": self.path.name}  # fmt: skip
