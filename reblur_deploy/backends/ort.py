"""ONNX Runtime backend: the CUDA execution provider when asked for a CUDA device (with IO
binding, so tensors never leave the GPU), else the CPU provider."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DependencyError
from . import graphs
from .base import Backend, BackendError

ORT_HINT = "pip install onnxruntime (or pip install -e '.[onnx]')"
ORT_GPU_HINT = (
    "pip uninstall onnxruntime && pip install onnxruntime-gpu (or pip install -e '.[gpu]'), "
    "with a CUDA toolkit that matches it"
)


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(f"the onnxruntime backend needs onnxruntime: {ORT_HINT}") from None
    return onnxruntime


def has_cuda_provider() -> bool:
    try:
        ort = import_onnxruntime()
    except DependencyError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX model (a file, its bytes, or ``module`` exported in memory).

    ``model``: an ``.onnx`` path or serialized bytes written by ``reblur-export --to onnx``; when
    None, ``module`` is exported in memory (a few seconds), fp16 when ``dtype`` is float16.
    ``threads``: intra-op threads on the CPU (default: ONNX Runtime's, all cores).
    """

    name = "onnxruntime"
    frozen = True

    def __init__(
        self,
        module: nn.Module | None,
        device: torch.device,
        dtype: torch.dtype,
        model: str | os.PathLike | bytes | None = None,
        threads: int | None = None,
        **limits,
    ):
        ort = import_onnxruntime()
        if dtype not in (torch.float32, torch.float16):
            raise ConfigError("the onnxruntime backend runs fp32 or fp16 models, not bf16")
        self.source = "the ONNX model"  # named in messages (see exported.check_exported)
        if model is None:
            if module is None:
                raise ConfigError("the onnxruntime backend needs a module or an ONNX model")
            proto, _ = graphs.onnx_model(module, fp16=dtype == torch.float16)
            model = proto.SerializeToString()
        elif not isinstance(model, bytes):
            if not Path(model).is_file():
                raise ConfigError(f"no ONNX model {str(model)!r}")
            model = self.source = str(model)

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DependencyError(
                    "onnxruntime on a CUDA device needs onnxruntime-gpu (this onnxruntime has "
                    f"{', '.join(ort.get_available_providers())}): {ORT_GPU_HINT}"
                )
            index = device.index if device.index is not None else torch.cuda.current_device()
            device = torch.device("cuda", index)
            # Run on torch's current stream: work queued by torch before infer() is ordered
            # before the network, and its output can be used by torch right away.
            stream = torch.cuda.current_stream(device).cuda_stream
            cuda = {"device_id": index, "user_compute_stream": str(stream)}
            providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(model, options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime cannot load the model: {e}") from None

        meta = self.session.get_modelmeta().custom_metadata_map
        divisor = int(meta.get("size_divisor", getattr(module, "size_divisor", 1)))
        precision = meta.get("precision", "fp16" if dtype == torch.float16 else "fp32")
        super().__init__(
            device,
            torch.float16 if precision == "fp16" else torch.float32,
            divisor,
            module,
            **limits,
        )
        self.metadata = dict(meta)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.provider = self.session.get_providers()[0]

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            (out,) = self.session.run([self.output_name], {self.input_name: batch.detach().numpy()})
            return torch.from_numpy(out)
        # IO binding: ONNX Runtime reads and writes torch's CUDA memory directly. Every
        # network here returns an output of its input's shape.
        out = torch.empty_like(batch)
        binding = self.session.io_binding()
        for bind, name, tensor in (
            (binding.bind_input, self.input_name, batch),
            (binding.bind_output, self.output_name, out),
        ):
            bind(
                name=name,
                device_type="cuda",
                device_id=self.device.index,
                element_type=np.float32,
                shape=tuple(tensor.shape),
                buffer_ptr=tensor.data_ptr(),
            )
        self.session.run_with_iobinding(binding)
        return out

    def describe(self) -> str:
        return f"{super().describe()} via {self.provider}"
