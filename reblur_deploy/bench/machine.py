"""The machine a run measured: CPU, GPU, versions, load, and its measured matmul peak."""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import time

import torch

from ..device import cpu_flags, cpu_name
from .timing import sync


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:
        return None


def bf16_units() -> list[str]:
    """The CPU's bf16 matrix units (bf16 autocast pays off with them): AMX, avx512_bf16."""
    flags = cpu_flags().split()
    return [flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags]


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` n×n matrix products (after 2 warm-up products)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def machine_info(device: torch.device) -> dict:
    from .. import __version__

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            "reblur-deploy": __version__,
            "torch": torch.__version__,
            **{
                name: _version(module)
                for name, module in (
                    ("triton", "triton"),
                    ("onnxruntime", "onnxruntime"),
                    ("tensorrt", "tensorrt"),
                    ("scikit-image", "skimage"),
                    ("numpy", "numpy"),
                )
            },
        },
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["versions"]["cuda"] = torch.version.cuda
        info["versions"]["cudnn"] = torch.backends.cudnn.version()
    return info
