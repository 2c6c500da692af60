"""Where and in what precision networks run: the small torch helpers every layer shares.

``resolve_device``/``resolve_dtype`` turn user strings into torch objects (with one-line errors),
``autocast`` is the forward-pass precision context (a no-op for float32), ``native_bf16`` says
whether bf16 autocast pays on a device, and ``frozen`` turns off the gradients of some modules'
parameters for a block (gradients still flow through them).
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` takes CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"invalid device {device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but this torch build sees no CUDA GPU")
    return device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"unsupported dtype {dtype!r}; choose fp32, fp16 or bf16")


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``; float32 or None runs as it is."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def cpu_flags() -> str:
    """The CPU's instruction-set flags (the ``flags`` line of /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def cpu_name() -> str:
    """The CPU's model name (``model name`` in /proc/cpuinfo where there is one)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout the networks run in on ``device``: channels-last (NHWC) on CPUs, where
    oneDNN's convolutions run unet-lite's inference 1.5–1.9× faster in it from 360p to 1080p
    and a TTA crop step 2× faster (Intel Xeon with AMX; reblur-bench's profile section);
    NCHW elsewhere until measured."""
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether bf16 arithmetic runs natively on this kind of device: a CUDA GPU with bf16
    support, or a CPU with AVX512-BF16 or AMX (oneDNN's bf16 kernels; elsewhere bf16 autocast
    on a CPU is emulated and slower than float32)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    flags = cpu_flags().split()
    return device_type == "cpu" and ("avx512_bf16" in flags or "amx_bf16" in flags)


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """No gradients for the parameters of ``modules`` inside the block (gradients still flow
    through them to their inputs); restored afterwards."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
