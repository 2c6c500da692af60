"""Inference backends behind one interface, ``backend.infer(batch) -> batch``.

``create_backend(name, deblur_module, device, dtype, **options)`` builds one:

=============== ====================================================== ===========================
name            runs                                                   options
=============== ====================================================== ===========================
``eager``       the torch module                                       ``max_batch``
``compile``     ``torch.compile(module)`` (compiles per new shape)     ``mode``, ``dynamic``
``onnxruntime`` an ONNX model: ``model=`` file/bytes, else the module  ``model``, ``threads``
                exported in memory; CUDA provider + IO binding on GPU
``tensorrt``    an engine: ``engine=`` file/bytes, else built from     ``engine``, ``profile``,
                the module in memory (minutes)                         ``timing_cache``
``auto``        the first of ``available_backends(device)`` that can
                be created: tensorrt only when given ``engine=``
=============== ====================================================== ===========================

``eager`` and ``compile`` move and cast the module in place (as ``Deblurrer`` does); the others
export a copy. Every backend takes ``max_batch`` (larger batches are split). ``backend.frozen``
says whether the weights are fixed in a graph or engine: test-time adaptation then runs on
``backend.module`` in torch.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn

from ..device import resolve_device, resolve_dtype
from ..errors import ConfigError, DependencyError
from .base import Backend, BackendError
from .eager import CompiledBackend, EagerBackend, compile_available

NAMES = ("tensorrt", "onnxruntime", "eager", "compile")
ALIASES = {"torch": "eager", "ort": "onnxruntime", "trt": "tensorrt", "torch-compile": "compile"}
OPTIONS = {
    "eager": {"max_batch"},
    "compile": {"max_batch", "mode", "dynamic"},
    "onnxruntime": {"max_batch", "model", "threads"},
    "tensorrt": {"max_batch", "engine", "profile", "timing_cache"},
}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def available_backends(device: str | torch.device = "auto") -> list[str]:
    """The backends that can run on ``device`` with what is installed, in the order ``auto``
    prefers them: fastest steady-state first, except that ``compile`` (whose first call per
    shape takes tens of seconds) comes after ``eager``.

    On a CPU, ONNX Runtime runs the paper's U-Net about 1.8× faster than eager PyTorch
    (2 cores, 256×256); on a GPU, a TensorRT engine is expected to be fastest (measure with
    ``reblur-bench``).
    """
    dev = resolve_device(device)
    names = []
    if dev.type == "cuda" and _installed("tensorrt"):
        names.append("tensorrt")
    if _installed("onnxruntime") and dev.type in ("cpu", "cuda"):
        from .ort import has_cuda_provider

        if dev.type == "cpu" or has_cuda_provider():
            names.append("onnxruntime")
    names.append("eager")
    if dev.type in ("cpu", "cuda") and compile_available(dev):
        names.append("compile")
    return names


def create_backend(
    name: str,
    deblur: nn.Module | None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "fp32",
    **options,
) -> Backend:
    """Build the backend ``name`` (see the module docstring) for the deblurring module."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    key = ALIASES.get(name, name)
    if key == "auto":
        return _auto(deblur, dev, dt, options)
    if key not in OPTIONS:
        raise ConfigError(f"unknown backend {name!r}; choose auto, {', '.join(NAMES)}")
    unknown = set(options) - OPTIONS[key]
    if unknown:
        raise ConfigError(
            f"backend {key!r} takes no option {', '.join(sorted(unknown))} "
            f"(it takes {', '.join(sorted(OPTIONS[key]))})"
        )
    if deblur is None and key in ("eager", "compile"):
        raise ConfigError(f"the {key} backend needs the deblurring module")
    if key == "eager":
        return EagerBackend(deblur, dev, dt, **options)
    if key == "compile":
        return CompiledBackend(deblur, dev, dt, **options)
    if key == "onnxruntime":
        from .ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(deblur, dev, dt, **options)
    from .trt import TensorRTBackend

    return TensorRTBackend(deblur, dev, dt, **options)


def _auto(deblur, dev: torch.device, dt: torch.dtype, options: dict) -> Backend:
    for key in available_backends(dev):
        if key == "tensorrt" and not options.get("engine"):
            continue  # building an engine takes minutes: only with one given
        if key == "onnxruntime" and deblur is None and not options.get("model"):
            continue
        chosen = {k: v for k, v in options.items() if k in OPTIONS[key]}
        try:
            return create_backend(key, deblur, dev, dt, **chosen)
        except (DependencyError, BackendError, ConfigError) as e:
            if key == "eager":
                raise
            warnings.warn(f"backend auto: skipping {key} ({e})", stacklevel=3)
    raise ConfigError("no backend can run here")  # unreachable: eager always can


__all__ = [
    "NAMES",
    "Backend",
    "BackendError",
    "CompiledBackend",
    "EagerBackend",
    "available_backends",
    "create_backend",
]
