"""TensorRT backend: a serialized engine run on torch's current CUDA stream, with torch CUDA
tensors as inputs and outputs (no copies, no second stream to synchronise).

Engines are built from the ONNX graph of ``graphs.onnx_model`` as strongly typed networks: the
graph's types decide the precision (the fp16 graph computes in float16 with float32 inputs and
outputs). That is the only mixed-precision route TensorRT 11 keeps (its weak-typing builder
flags such as ``BuilderFlag.FP16`` are gone) and it works the same on TensorRT 10.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..atomic import write_bytes_atomic
from ..errors import ConfigError, DependencyError
from . import graphs
from .base import Backend, BackendError

TRT_HINT = (
    "pip install 'tensorrt>=10' (or pip install -e '.[trt]') on a machine with an NVIDIA GPU, "
    "its driver and the CUDA build of torch"
)
Shape = tuple[int, int, int, int]
# min / opt / max N×C×H×W: from a thumbnail to 1080p (1088 = 1080 padded to 16), 720p optimised.
DEFAULT_PROFILE: tuple[Shape, Shape, Shape] = (
    (1, 3, 256, 256),
    (1, 3, 720, 1280),
    (4, 3, 1088, 1920),
)
_LOGGER = None


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise DependencyError(f"TensorRT is not installed: {TRT_HINT}") from None
    return tensorrt


def require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        build = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise DependencyError(
            f"{what} needs an NVIDIA GPU, and this torch ({torch.__version__}, {build}) sees "
            f"none: {TRT_HINT}"
        )


def logger():
    """One TensorRT logger for the process (TensorRT objects keep a reference to it)."""
    global _LOGGER
    if _LOGGER is None:
        trt = import_tensorrt()
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def fit_profile(profile: tuple[Shape, Shape, Shape], size_divisor: int) -> tuple[Shape, ...]:
    """Round H and W of each shape up to the divisor (for the defaults)."""
    d = max(1, int(size_divisor))
    return tuple((n, c, -(-h // d) * d, -(-w // d) * d) for n, c, h, w in profile)


def check_profile(profile: tuple[Shape, Shape, Shape], size_divisor: int) -> None:
    """Raise ``ConfigError`` unless min ≤ opt ≤ max, C = 3 and H, W are multiples of the divisor."""
    names = ("min", "opt", "max")
    for name, shape in zip(names, profile, strict=True):
        if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
            raise ConfigError(f"--{name}-shape must be N×3×H×W with positive sizes, got {shape}")
        if shape[2] % size_divisor or shape[3] % size_divisor:
            raise ConfigError(
                f"--{name}-shape {'x'.join(map(str, shape))}: H and W must be multiples of "
                f"{size_divisor} (the network's size_divisor)"
            )
    lo, opt, hi = profile
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise ConfigError(f"the shapes must satisfy min ≤ opt ≤ max in every axis: {profile}")


def build_engine(
    onnx_bytes: bytes,
    profile: tuple[Shape, Shape, Shape] = DEFAULT_PROFILE,
    timing_cache: str | os.PathLike | None = None,
    strict_fp32: bool = False,
    device: torch.device | None = None,
    log: Callable[[str], None] | None = None,
) -> bytes:
    """Build a serialized engine from an ONNX model with one optimisation profile.

    ``timing_cache``: a file read before the build (when it exists) and written after it, so
    later builds of similar networks skip most kernel timing. ``strict_fp32`` turns TF32 off
    (for fp32 engines whose outputs must match PyTorch's to 1e-4).
    """
    trt = import_tensorrt()
    require_cuda("building a TensorRT engine")
    with torch.cuda.device(device or torch.cuda.current_device()):
        builder = trt.Builder(logger())
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger())
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse the ONNX graph: {errors}")
        config = builder.create_builder_config()
        if strict_fp32 and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        shapes = builder.create_optimization_profile()
        shapes.set_shape(network.get_input(0).name, *profile)
        config.add_optimization_profile(shapes)

        cache_path = Path(timing_cache) if timing_cache else None
        cached = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
        cache = config.create_timing_cache(cached)
        if not config.set_timing_cache(cache, ignore_mismatch=False) and cached:
            if log:
                log(f"timing cache {cache_path} is from another GPU or TensorRT; starting anew")
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        if log:
            log("building the TensorRT engine (this takes a while) ...")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError("TensorRT could not build an engine (its messages are above)")
        if cache_path:
            write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
        return bytes(serialized)


def read_sidecar(engine_path: str | os.PathLike) -> dict:
    """The JSON written beside an engine by ``reblur-export --to trt`` ({} when absent)."""
    sidecar = Path(f"{engine_path}.json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else {}


def _engine_bytes(engine, module, dtype, profile, timing_cache, device):
    """(serialized engine, sidecar facts, source named in messages): read from ``engine`` (a
    file, with its sidecar, or bytes), or built from ``module`` in memory (minutes)."""
    if engine is None:
        if module is None:
            raise ConfigError("the tensorrt backend needs a module or an engine file")
        if dtype not in (torch.float32, torch.float16):
            raise ConfigError("the tensorrt backend builds fp32 or fp16 engines, not bf16")
        divisor = int(getattr(module, "size_divisor", 1))
        profile = fit_profile(profile or DEFAULT_PROFILE, divisor)
        check_profile(profile, divisor)
        proto, _ = graphs.onnx_model(module, fp16=dtype == torch.float16)
        built = build_engine(
            proto.SerializeToString(),
            profile,
            timing_cache,
            strict_fp32=dtype == torch.float32,
            device=device,
        )
        return (
            built,
            {"precision": "fp16" if dtype == torch.float16 else "fp32"},
            "the TensorRT engine",
        )
    if isinstance(engine, bytes):
        return engine, {}, "the TensorRT engine"
    path = Path(engine)
    if not path.is_file():
        raise ConfigError(f"no TensorRT engine {str(path)!r}")
    return path.read_bytes(), read_sidecar(path), str(path)


class TensorRTBackend(Backend):
    """Runs a TensorRT engine: a file (``engine=``, from ``reblur-export --to trt``), its bytes,
    or one built in memory from ``module`` (minutes; pass ``profile`` and ``timing_cache``).

    Inputs and outputs are float32 torch CUDA tensors; the engine runs on torch's current
    stream. Batch and size limits come from the engine's optimisation profile.
    """

    name = "tensorrt"
    frozen = True

    def __init__(
        self,
        module: nn.Module | None,
        device: torch.device,
        dtype: torch.dtype,
        engine: str | os.PathLike | bytes | None = None,
        profile: tuple[Shape, Shape, Shape] | None = None,
        timing_cache: str | os.PathLike | None = None,
        max_batch: int | None = None,
    ):
        trt = import_tensorrt()
        if device.type != "cuda":
            raise ConfigError(f"the tensorrt backend runs on a CUDA device, not {device}")
        require_cuda("the tensorrt backend")
        index = device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", index)
        engine, meta, self.source = _engine_bytes(engine, module, dtype, profile, timing_cache,
                                                  device)  # fmt: skip
        with torch.cuda.device(device):
            self.runtime = trt.Runtime(logger())
            self.engine = self.runtime.deserialize_cuda_engine(engine)
            if self.engine is None:
                raise BackendError(
                    "TensorRT cannot load the engine: engines only run on the TensorRT version "
                    "and GPU model that built them; rebuild it here with reblur-export --to trt"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"expected an engine with one input and one output, got {names}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        for name in names:
            if self.engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise BackendError(f"engine tensor {name!r} is not float32")
        self.profile = tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(inputs[0], 0))
        lo, _, hi = self.profile
        divisor = int(meta.get("size_divisor", getattr(module, "size_divisor", 1)))
        super().__init__(
            device,
            torch.float16 if meta.get("precision") == "fp16" else torch.float32,
            divisor,
            module,
            min_batch=lo[0],
            max_batch=min(hi[0], max_batch) if max_batch else hi[0],
            min_size=(lo[2], lo[3]),
            max_size=(hi[2], hi[3]),
        )
        self.metadata = meta

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.context.set_input_shape(self.input_name, tuple(batch.shape)):
            raise BackendError(f"the engine rejects input shape {tuple(batch.shape)}")
        out = torch.empty(
            tuple(self.context.get_tensor_shape(self.output_name)),
            dtype=torch.float32,
            device=self.device,
        )
        self.context.set_tensor_address(self.input_name, batch.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        with torch.cuda.device(self.device):
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise BackendError("TensorRT failed to run the engine")
        return out
