"""Whether this CPU has bfloat16 hardware that oneDNN uses under `torch.autocast("cpu", dtype=torch.bfloat16)`."""

from __future__ import annotations

import torch


def bf16_supported() -> bool:
    """AVX-512 BF16 or AMX. Without them the convolutions are emulated, many times slower than float32,
    and PyTorch's CPU LSTM fails on its first step with 'could not create a primitive descriptor'."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_name() -> str:
    return torch.backends.cpu.get_cpu_capability()
