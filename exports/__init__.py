"""The contract between training and serving: ONNX files, their metadata, and the code both sides share.

Training writes exports with `exports.metadata`; serving reads them with it. Decoding of the spellers
(`exports.decoding`) works on numpy arrays and any step function, so training runs it over PyTorch and
serving over ONNX Runtime. Nothing here imports torch.
"""

from pathlib import Path

EXPORTS_DIR = Path(__file__).resolve().parent
