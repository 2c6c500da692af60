"""``peak``: the device's measured matmul peak, the denominator of the fraction-of-peak columns."""

from __future__ import annotations

import torch

from .config import BenchConfig
from .machine import matmul_peak
from .report import ending, section


def measure(device: torch.device, config: BenchConfig, done: dict) -> dict:
    """Achievable matmul throughput, the best of several runs: the denominator of every
    fraction-of-peak figure."""
    n = 8192 if device.type == "cuda" and not config.quick else 2048
    rows = []
    from ..device import native_bf16

    dtypes = [torch.float32] + ([torch.bfloat16] if native_bf16(device.type) else [])
    for dtype in dtypes:
        flops = matmul_peak(device, dtype, n, max(5, config.repeats))
        rows.append({"dtype": str(dtype).removeprefix("torch."), "n": n, "tflops": flops / 1e12})
    return {"rows": rows, "peak_tflops": {r["dtype"]: r["tflops"] for r in rows}}


def markdown(s: dict) -> list[str]:
    columns = [("dtype", "dtype"), ("n", "n"), ("tflops", "TFLOP/s")]
    return section("**Measured peak** (square matmul):", s["rows"], columns) + ending(s)
