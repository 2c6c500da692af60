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
                be created: tensorrt only when given ``engine=``;
                onnxruntime on the module's graph from the user cache,
                in float32, within 1/255 of eager and, on a CPU, faster
                than eager there (both measured once per graph and CPU)
=============== ====================================================== ===========================

``auto`` is ``Deblurrer``'s default: the fastest engine within 1/255 of eager float32 that
needs no compile step. Which one that is depends on the CPU: eager PyTorch (channels-last)
runs unet-lite at 720p 1.9× faster than in NCHW and 1.15× faster than ONNX Runtime on an
Intel Xeon with AMX, while ONNX Runtime was 1.8× faster than eager NCHW on an AMD EPYC Zen 4;
so it is measured, once per machine and weights, with the exported graph cached
(``backends.graphs.cached_onnx_file``).

``eager`` and ``compile`` move and cast the module in place (as ``Deblurrer`` does); the others
export a copy. Every backend takes ``max_batch`` (larger batches are split). ``backend.frozen``
says whether the weights are fixed in a graph or engine: test-time adaptation then runs on
``backend.module`` in torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time
import warnings

import torch
from torch import nn

from ..atomic import write_bytes_atomic
from ..device import cpu_name, resolve_device, resolve_dtype
from ..errors import ConfigError, DependencyError, ReblurError
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
        chosen = {k: v for k, v in options.items() if k in OPTIONS[key]}
        try:
            if key == "onnxruntime" and not options.get("model"):
                backend = _onnxruntime_on_cached_graph(deblur, dev, dt, chosen)
                if backend is None:
                    continue
                return backend
            return create_backend(key, deblur, dev, dt, **chosen)
        except (DependencyError, BackendError, ConfigError) as e:
            if key == "eager":
                raise
            warnings.warn(f"backend auto: skipping {key} ({e})", stacklevel=3)
    raise ConfigError("no backend can run here")  # unreachable: eager always can


# The most an engine may differ from eager float32 PyTorch to be picked by ``auto``.
AUTO_TOLERANCE = 1 / 255


def _onnxruntime_on_cached_graph(deblur, dev: torch.device, dt: torch.dtype, options: dict):
    """ONNX Runtime on the module's graph from the user cache (exported once per weights and
    versions), when its output is within ``AUTO_TOLERANCE`` of eager float32 PyTorch on a test
    frame and, on a CPU, it runs that frame faster than eager PyTorch does on this CPU (which
    is fastest differs between CPUs: eager in channels-last beats it on Intel Xeons with AMX).
    Both are measured once per graph (and CPU) and kept beside it. None when ONNX Runtime
    cannot run this module or precision, or loses either test."""
    if deblur is None or dt != torch.float32:
        return None  # bf16 has no ONNX Runtime kernels; fp16 is not within 1/255
    from . import graphs
    from .ort import OnnxRuntimeBackend

    try:
        path = graphs.cached_onnx_file(deblur)
    except (OSError, ReblurError):
        path = None  # an unwritable cache: export in memory, as the onnxruntime backend does
    backend = OnnxRuntimeBackend(deblur, dev, dt, model=path, **options)
    verdict = path.with_suffix(".json") if path is not None else None
    known = _read_verdict(verdict)
    found = dict(known)
    if "max_abs_difference" not in found:
        found["max_abs_difference"] = _difference_from_eager(backend, deblur, dev)
    if found["max_abs_difference"] > AUTO_TOLERANCE:
        difference = found["max_abs_difference"] * 255
        warnings.warn(f"backend auto: onnxruntime differs from torch by {difference:.2f}/255 "
                      "on these weights; running torch", stacklevel=4)  # fmt: skip
        return None
    faster = True
    if dev.type == "cpu":
        cpu = f"{cpu_name()}, {torch.get_num_threads()} threads"
        found.setdefault("onnxruntime_faster", {})
        if cpu not in found["onnxruntime_faster"]:
            found["onnxruntime_faster"][cpu] = _faster_than_eager(backend, deblur, dev, dt)
        faster = found["onnxruntime_faster"][cpu]
    if verdict is not None and found != known:
        with contextlib.suppress(OSError, ReblurError):
            write_bytes_atomic(verdict, json.dumps(found, indent=1).encode())
    return backend if faster else None


def _read_verdict(path) -> dict:
    """What was measured of a cached graph (empty when nothing was, or the file is damaged)."""
    try:
        found = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _test_frame(divisor: int, dev: torch.device) -> torch.Tensor:
    """A fixed 368×640 test frame (padded to the divisor): smooth content with edges and noise,
    values in [0, 1]. A quarter of 720p, so that a large network's first run stays small in
    time and memory; where the engines are close the winner can change with the size (on the
    Intel Xeon above ONNX Runtime wins by 6 % here and loses by 11 % at 720p)."""
    generator = torch.Generator().manual_seed(0)
    height, width = (-(-size // divisor) * divisor for size in (368, 640))
    coarse = torch.rand(1, 3, height // 16 + 1, width // 16 + 1, generator=generator)
    frame = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return (frame + 0.05 * torch.randn(frame.shape, generator=generator)).clamp_(0, 1).to(dev)


def _faster_than_eager(backend: Backend, deblur: nn.Module, dev, dt) -> bool:
    """Whether ``backend`` runs the test frame faster than eager PyTorch here: the best of
    three runs each, taking turns (a load on the machine slows both alike)."""
    eager = EagerBackend(deblur, dev, dt)
    frame = _test_frame(eager.size_divisor, dev)
    best = {"engine": float("inf"), "eager": float("inf")}
    with torch.inference_mode():
        backend.infer(frame), eager.infer(frame)  # first calls set up kernels
        for _ in range(3):
            for name, run in (("engine", backend), ("eager", eager)):
                start = time.perf_counter()
                run.infer(frame)
                best[name] = min(best[name], time.perf_counter() - start)
    return best["engine"] < best["eager"]


def _difference_from_eager(backend: Backend, deblur: nn.Module, dev: torch.device) -> float:
    """The largest |engine − eager float32| of the clamped outputs on the test frame."""
    frame = _test_frame(int(getattr(deblur, "size_divisor", 1)), dev)
    with torch.inference_mode():
        reference = deblur(frame).float().clamp_(0, 1)
        output = backend.infer(frame).to(frame.device, torch.float32).clamp_(0, 1)
    return float((output - reference).abs().max())


__all__ = [
    "AUTO_TOLERANCE",
    "NAMES",
    "Backend",
    "BackendError",
    "CompiledBackend",
    "EagerBackend",
    "available_backends",
    "create_backend",
]
