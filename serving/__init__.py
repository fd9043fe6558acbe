"""Serving side of SceneSpell: ONNX Runtime models behind a BentoML service. Never imports torch."""
