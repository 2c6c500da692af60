"""TorchScript and torch.export (ExportedProgram) files, for LibTorch and AOTInductor.

* TorchScript (``.ts``/``.pt``): ``torch.jit.trace`` of the float32 network; loads in C++ with
  ``torch::jit::load``. TorchScript is deprecated upstream (torch 2.13 warns); it stays here for
  existing LibTorch applications.
* ExportedProgram (``.pt2``): ``torch.export`` with dynamic N, H, W (H, W multiples of
  ``size_divisor``); loads with ``torch.export.load`` and compiles for C++ with AOTInductor
  (``torch._inductor.aoti_compile_and_package``).

Both carry the deployment metadata as an extra file ``reblur_deploy.json`` and are verified
against eager PyTorch on two input shapes before they get their final name.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from reblur_deploy.backends import graphs

from ._common import ExportResult, atomic_output, describe, load_module
from .verify import TOLERANCE, check_shapes, compare, eager_reference

EXTRA_FILE = "reblur_deploy.json"


def export_torchscript(
    weights,
    out: str | os.PathLike,
    *,
    role: str = "deblur",
    tolerance: float | None = None,
) -> ExportResult:
    """Trace the ``role`` module of ``weights`` to a TorchScript file and verify it."""
    module, loaded = load_module(weights, role)
    net = graphs.frozen_copy(module)
    example = graphs.example_input(module.size_divisor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        traced = torch.jit.trace(net, (example,), check_trace=False)

    def save_and_reload(path: Path, extra: dict[str, str]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(traced, str(path), _extra_files=extra)
            return torch.jit.load(str(path), map_location="cpu")

    return _save_and_verify(module, loaded, role, out, tolerance, "torchscript", save_and_reload)


def export_exported_program(
    weights,
    out: str | os.PathLike,
    *,
    role: str = "deblur",
    tolerance: float | None = None,
) -> ExportResult:
    """``torch.export`` the ``role`` module of ``weights`` to a .pt2 file and verify it."""
    module, loaded = load_module(weights, role)
    program = graphs.export_program(module)

    def save_and_reload(path: Path, extra: dict[str, str]):
        torch.export.save(program, str(path), extra_files=extra)
        return torch.export.load(str(path)).module()

    return _save_and_verify(
        module, loaded, role, out, tolerance, "exported-program", save_and_reload
    )


def _save_and_verify(module, loaded, role, out, tolerance, fmt, save_and_reload) -> ExportResult:
    """Write under a temporary name with the metadata as an extra file, reload, compare with
    eager PyTorch, and keep the file only if the comparison passes."""
    tolerance = TOLERANCE["fp32"] if tolerance is None else tolerance
    meta = describe(module, loaded, role, "fp32") | {"format": fmt}
    with atomic_output(out, (loaded.path,)) as tmp:
        reloaded = save_and_reload(tmp, {EXTRA_FILE: json.dumps(meta)})
        checks = compare(
            eager_reference(module),
            _no_grad(reloaded),
            check_shapes(module.size_divisor),
            tolerance,
        )
    return ExportResult(out, fmt, "fp32", tolerance, checks)


def _no_grad(fn):
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fn(x)

    return run
