"""`make bench`: model speed (ONNX Runtime vs PyTorch eager), serving speed and memory, startup time.

`python -m bench.run` measures everything in one run and writes bench/results.md; see README.md.
"""
