"""Torch-TensorRT export through its dynamo path (needs torch-tensorrt and an NVIDIA GPU).

The network is exported with ``torch.export`` (dynamic N, H, W inside the optimisation profile;
H and W as multiples of ``size_divisor``, which Torch-TensorRT's own tracing cannot express),
compiled with ``torch_tensorrt.dynamo.compile`` (the fp16 variant keeps float32 inputs and
outputs and casts inside, so Torch-TensorRT's explicit typing runs it in float16), saved with
``torch_tensorrt.save`` as an ExportedProgram, reloaded and checked against eager PyTorch.
Load it with ``torch_tensorrt.load(path).module()`` (Python) or from C++ via LibTorch with the
Torch-TensorRT runtime library.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from reblur_deploy.backends import graphs
from reblur_deploy.backends.trt import require_cuda
from reblur_deploy.errors import DependencyError

from ._common import ExportResult, Log, atomic_output, describe, load_module
from .tensorrt import default_timing_cache, resolve_profile
from .verify import TOLERANCE, compare, eager_reference, profile_shapes

_TORCH = ".".join(torch.__version__.split("+")[0].split(".")[:2])
TORCH_TRT_HINT = (
    f"pip install 'torch-tensorrt=={_TORCH}.*' 'tensorrt>=10' (the Torch-TensorRT release that "
    "matches this torch; or pip install -e '.[trt]') on a machine with an NVIDIA GPU, its "
    "driver and the CUDA build of torch"
)


def require_torch_tensorrt():
    try:
        import torch_tensorrt
    except ImportError:
        raise DependencyError(f"Torch-TensorRT is not installed: {TORCH_TRT_HINT}") from None
    require_cuda("reblur-export --to torch-trt")
    return torch_tensorrt


def export_torch_trt(
    weights,
    out: str | os.PathLike,
    *,
    role: str = "deblur",
    fp16: bool = True,
    profile=None,
    timing_cache: str | os.PathLike | None = None,
    tolerance: float | None = None,
    log: Log | None = None,
) -> ExportResult:
    """Compile, save (ExportedProgram), reload and verify a Torch-TensorRT module."""
    log = log or (lambda message: None)
    torch_tensorrt = require_torch_tensorrt()
    module, loaded = load_module(weights, role)
    divisor = int(module.size_divisor)
    lo, opt, hi = profile = resolve_profile(profile, divisor)
    precision = "fp16" if fp16 else "fp32"
    tolerance = TOLERANCE[precision] if tolerance is None else tolerance
    timing_cache = Path(timing_cache) if timing_cache else default_timing_cache()
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda", torch.cuda.current_device())

    shapes = graphs.dynamic_shapes(
        divisor, batch=(lo[0], hi[0]), height=(lo[2], hi[2]), width=(lo[3], hi[3])
    )
    example = torch.rand(min(max(2, lo[0]), hi[0]), 3, opt[2], opt[3], device=device)
    program = graphs.export_program(module, fp16, device, example, shapes)
    log("compiling with Torch-TensorRT (this takes a while) ...")
    compiled = torch_tensorrt.dynamo.compile(
        program,
        arg_inputs=[
            torch_tensorrt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=torch.float32)
        ],
        min_block_size=1,
        timing_cache_path=str(timing_cache),
    )
    meta = describe(module, loaded, role, precision) | {
        "format": "torch-tensorrt-exported-program",
        "profile": {"min": lo, "opt": opt, "max": hi},
        "torch_tensorrt_version": torch_tensorrt.__version__,
        "cuda_version": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(device),
    }
    sidecar_path = Path(f"{out}.json")
    with atomic_output(out, (loaded.path,)) as tmp, atomic_output(sidecar_path) as tmp_json:
        torch_tensorrt.save(
            compiled,
            str(tmp),
            output_format="exported_program",
            arg_inputs=[example],
            dynamic_shapes=shapes,
            retrace=True,
        )
        reloaded = torch_tensorrt.load(str(tmp)).module()

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return reloaded(x)

        checks = compare(
            eager_reference(module, device), run, profile_shapes(profile), tolerance, device
        )
        meta["parity"] = {"tolerance": tolerance, "checks": [str(c) for c in checks]}
        tmp_json.write_text(json.dumps(meta, indent=2) + "\n")
    details = {"sidecar": str(sidecar_path)}
    return ExportResult(out, "torch-tensorrt", precision, tolerance, checks, details)
