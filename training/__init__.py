"""Training side of SceneSpell: PyTorch models, training loops and ONNX export."""
