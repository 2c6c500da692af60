"""Custom kernels and the rule that picks them: always optional, always with a torch fallback.

* **Histogram matching** (binned, ``histmatch.match_histograms_fast``): ``ext`` = C++ (CPU)
  and CUDA kernels from kernels/csrc/, built on first use; ``torch`` = the same algorithm in torch
  operations. Automatic choice: ``ext`` whenever the extension builds for the tensor's device,
  else ``torch`` (``reblur-bench`` measures both, docs/BENCHMARKS.md). Within the C++ kernel,
  the per-pixel lookup (AVX-512 gathers, AVX2 gathers or scalar loads) is picked by its
  measured speed on the CPU (``histmatch_lookup()``): AVX-512 gathers are slow on AMD Zen 4.
* **Fused 5×5 ResBlock of MR** (forward and input gradient, ``kernels.resblock``): ``triton`` =
  one Triton kernel per block and pass; ``torch`` = cuDNN / oneDNN convolutions. Automatic
  choice: ``torch``; the fused kernel is opt-in (``TTAConfig(fused=True)``) until a GPU run of
  ``reblur-bench`` shows it faster than torch.compile + cuDNN.

``REBLUR_KERNELS=torch|ext|triton`` (a comma-separated list works too) forces the choice: an
operation uses the first listed implementation it has, else torch; a forced implementation that
cannot run here raises ``NotAvailableError`` instead of falling back silently. Each choice is
logged once (logger ``reblur_deploy.kernels``, level INFO) per operation, device and dtype.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading

import torch

from ..errors import ConfigError, NotAvailableError

# CPP_FLAGS, OPENMP, source_dir: for building variants of the kernels (scripts/histmatch_ab.py)
from ._ext import (
    CPP_FLAGS,
    OPENMP,
    extension_error,
    extension_has_cuda,
    load_extension,
    source_dir,
)

LOG = logging.getLogger("reblur_deploy.kernels")
ENV = "REBLUR_KERNELS"
IMPLEMENTATIONS = ("torch", "ext", "triton")
_logged: set[tuple] = set()
_log_lock = threading.Lock()


def forced() -> tuple[str, ...] | None:
    """The implementations ``REBLUR_KERNELS`` asks for, in order, or None (automatic)."""
    value = os.environ.get(ENV, "").strip().lower()
    if not value or value == "auto":
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in IMPLEMENTATIONS]
    if unknown:
        raise ConfigError(
            f"{ENV}={value!r}: unknown implementation {', '.join(unknown)}; "
            f"choose from {', '.join(IMPLEMENTATIONS)} (or auto)"
        )
    return names


def _log_once(op: str, device: torch.device, dtype, choice: str, why: str) -> None:
    key = (op, device.type, dtype, choice)
    with _log_lock:
        if key in _logged:
            return
        _logged.add(key)
    LOG.info("reblur-deploy kernels: %s on %s (%s) uses %s (%s)", op, device.type, dtype, choice,
             why)  # fmt: skip


def ext_available(device: torch.device) -> tuple[bool, str]:
    """Whether the C++/CUDA extension can run on ``device``, and if not, why."""
    if device.type not in ("cpu", "cuda"):
        return False, f"no kernels for {device.type}"
    if not load_extension():
        return False, f"the extension did not build: {extension_error()}"
    if device.type == "cuda" and not extension_has_cuda():
        from ._ext import cuda_buildable

        return False, f"the extension was built without CUDA ({cuda_buildable()[1]})"
    return True, ""


def triton_available(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton kernels can run on ``device`` (a CUDA GPU, or any device under
    ``TRITON_INTERPRET=1``, the interpreter CI uses)."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    if device.type != "cuda":
        return False, f"Triton kernels run on CUDA GPUs, not {device.type}"
    return True, ""


def _forced_choice(op: str, kernel: str, device, dtype, available) -> str | None:
    """The path ``ENV`` forces for ``op`` (``kernel`` or torch), or None when it names neither;
    ``available()`` (whether ``kernel`` can run, and why not) is asked only when it is named."""
    names = forced()
    if names is None:
        return None
    choice = next((n for n in names if n in (kernel, "torch")), "torch")
    if choice == kernel:
        ok, why = available()
        if not ok:
            raise NotAvailableError(f"{ENV} asks for the {kernel} kernels, but {why}")
    _log_once(op, device, dtype, choice, f"forced by {ENV}")
    return choice


def histmatch_impl(device: torch.device) -> str:
    """``"ext"`` or ``"torch"`` for binned histogram matching on ``device``."""
    device = torch.device(device)
    choice = _forced_choice("histogram matching", "ext", device, None,
                            lambda: ext_available(device))  # fmt: skip
    if choice is not None:
        return choice
    ok, why = ext_available(device)
    choice = "ext" if ok else "torch"
    _log_once("histogram matching", device, None, choice, "automatic" if ok else why)
    return choice


def histmatch_lookup() -> str | None:
    """The per-pixel lookup the C++ kernel runs on this CPU, ``"avx512"``, ``"avx2"`` or
    ``"portable"``: the fastest of those the CPU supports, timed when the extension first runs
    a lookup (``REBLUR_HISTMATCH_LUT`` forces one); None without the extension."""
    if not load_extension():
        return None
    return torch.ops.reblur_ext.hist_match_lut()


def resblock_impl(device: torch.device, dtype: torch.dtype, requested: bool = False) -> str:
    """``"triton"`` or ``"torch"`` for MR's 5×5 ResBlocks. ``requested``: the caller opted in
    (``TTAConfig(fused=True)``); without it the automatic rule keeps torch."""
    device = torch.device(device)
    choice = _forced_choice("fused ResBlock", "triton", device, dtype,
                            lambda: triton_available(device))  # fmt: skip
    if choice is not None:
        return choice
    if not requested:
        _log_once("fused ResBlock", device, dtype, "torch", "automatic: the fused kernel is opt-in")
        return "torch"
    ok, why = triton_available(device)
    choice = "triton" if ok else "torch"
    _log_once("fused ResBlock", device, dtype, choice, "requested" if ok else why)
    return choice


__all__ = [
    "CPP_FLAGS",
    "ENV",
    "IMPLEMENTATIONS",
    "OPENMP",
    "ext_available",
    "forced",
    "histmatch_impl",
    "histmatch_lookup",
    "load_extension",
    "resblock_impl",
    "source_dir",
    "triton_available",
]
