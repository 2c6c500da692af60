"""Frozen graphs of a network: torch.export programs and ONNX models with dynamic shapes.

Shared by the ONNX Runtime and TensorRT backends (which build their graph in memory when given
a torch module) and by ``reblur-export`` (which writes them to files). Every graph takes
``input`` (N×3×H×W float32 RGB in [0, 1]) and returns ``output`` (same shape, float32, not
clamped); N, H and W are dynamic, H and W as multiples of the network's ``size_divisor``.
Nothing pads inside a graph: the caller pads H and W and crops the result.

The fp16 variant keeps float32 inputs and outputs: it casts to float16 on entry and back on
exit, and holds float16 weights, so a caller never changes its buffers to switch precision
(and TensorRT builds it as a strongly typed network).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import io
import logging
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import DependencyError
from .base import BackendError

INPUT_NAME = "input"
OUTPUT_NAME = "output"
DEFAULT_OPSET = 18  # ONNX Runtime ≥ 1.14 and TensorRT ≥ 8.6 read it; 17 is the oldest we export
MIN_OPSET = 17
ONNX_HINT = "pip install 'onnx>=1.16' 'onnxscript>=0.1' onnxruntime (or pip install -e '.[onnx]')"


class HalfPrecision(nn.Module):
    """float32 in and out, float16 weights and arithmetic inside."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.half()
        self.size_divisor = int(getattr(net, "size_divisor", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(torch.float16)).to(torch.float32)


def frozen_copy(module: nn.Module, fp16: bool = False, device: str | torch.device = "cpu"):
    """A detached eval-mode copy on ``device`` (the caller's module is never moved or cast)."""
    net = copy.deepcopy(module).to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    net = HalfPrecision(net) if fp16 else net
    return net.eval()


def dynamic_shapes(
    size_divisor: int,
    batch: tuple[int, int | None] = (1, None),
    height: tuple[int, int | None] = (1, None),
    width: tuple[int, int | None] = (1, None),
) -> tuple[dict[int, object]]:
    """torch.export dynamic shapes for the single input: N, and H, W as multiples of the divisor.

    Ranges are in pixels (min, max or None); a range with min == max is static.
    """
    from torch.export import Dim

    d = max(1, int(size_divisor))

    def dim(name: str, lo: int, hi: int | None, multiple: int):
        lo_units = max(1, math.ceil(lo / multiple))
        hi_units = None if hi is None else hi // multiple
        if hi_units is not None and hi_units == lo_units:
            return None  # static
        kwargs = {"min": lo_units} if hi_units is None else {"min": lo_units, "max": hi_units}
        symbol = Dim(name, **kwargs)
        return symbol if multiple == 1 else multiple * symbol

    spec = {0: dim("batch", *batch, 1), 2: dim("h", *height, d), 3: dim("w", *width, d)}
    return ({axis: s for axis, s in spec.items() if s is not None},)


def example_input(size_divisor: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """An input to trace with: batch 2 and unequal H, W (so no size is specialised to 1 or tied
    to another), both multiples of the divisor."""
    d = max(1, int(size_divisor))
    return torch.rand(2, 3, d * math.ceil(32 / d), d * math.ceil(48 / d), device=device)


def export_program(
    module: nn.Module,
    fp16: bool = False,
    device: str | torch.device = "cpu",
    example: torch.Tensor | None = None,
    shapes: tuple[dict[int, object]] | None = None,
) -> torch.export.ExportedProgram:
    """``torch.export`` a frozen copy of ``module`` with dynamic N, H, W."""
    divisor = int(getattr(module, "size_divisor", 1))
    net = frozen_copy(module, fp16, device)
    x = example_input(divisor, device) if example is None else example.to(device)
    return torch.export.export(net, (x,), dynamic_shapes=shapes or dynamic_shapes(divisor))


def require_onnx():
    """Import onnx (and check onnxscript, which the torch.export-based exporter needs)."""
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise DependencyError(f"ONNX export needs {e.name}: {ONNX_HINT}") from None
    return onnx


def onnx_model(module: nn.Module, fp16: bool = False, opset: int = DEFAULT_OPSET):
    """An ONNX ModelProto of ``module`` (weights inside) and the name of the exporter used.

    Uses the torch.export-based exporter (``dynamo=True``); falls back to the TorchScript-based
    one only if that fails, with a warning saying why (the returned name says which ran).
    """
    onnx = require_onnx()
    divisor = int(getattr(module, "size_divisor", 1))
    net = frozen_copy(module, fp16)
    x = example_input(divisor)
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                net,
                (x,),
                dynamo=True,
                external_data=False,
                dynamic_shapes=dynamic_shapes(divisor),
                verbose=False,
                **names,
            )
        return program.model_proto, "torch.export"
    except Exception as e:  # the exporter raises many types; the fallback says which
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
    warnings.warn(
        f"the torch.export-based ONNX exporter failed ({reason}); "
        "falling back to the TorchScript-based exporter",
        stacklevel=2,
    )
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                net,
                (x,),
                buffer,
                dynamo=False,
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                **names,
            )
    except Exception as e:
        raise BackendError(
            f"cannot export {type(module).__name__} to ONNX: the torch.export-based exporter "
            f"failed ({reason}) and so did the TorchScript-based one ({type(e).__name__}: {e})"
        ) from None
    return onnx.load_from_string(buffer.getvalue()), "torchscript (fallback)"


def graph_key(module: nn.Module, fp16: bool = False, opset: int = DEFAULT_OPSET) -> str:
    """What an exported graph depends on, hashed: the network (its class, its configuration as
    ``repr`` shows it, every weight's bytes) and the exporter's versions and settings."""
    key = hashlib.sha256()
    versions = [_version(name) for name in ("reblur-deploy", "torch", "onnx", "onnxscript")]
    key.update(repr((versions, opset, fp16, type(module).__qualname__, repr(module))).encode())
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        key.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        key.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return key.hexdigest()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def cached_onnx_file(module: nn.Module, fp16: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """The ONNX file of ``module`` in the user cache (``reblur_deploy.cache``: graphs/), exported
    on the first call for these weights and versions (seconds) and read on every later one, in
    any process. Raises ``OSError`` when the cache cannot be written (callers then export in
    memory)."""
    from ..atomic import write_bytes_atomic
    from ..cache import cache_root

    path = cache_root() / "graphs" / f"{graph_key(module, fp16, opset)[:32]}.onnx"
    if not path.is_file():
        proto, _ = onnx_model(module, fp16=fp16, opset=opset)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, proto.SerializeToString())
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's notes ('torchvision is not installed', deprecations in torch)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)
