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

import os
from pathlib import Path

import torch

from reblur_deploy.backends import graphs
from reblur_deploy.backends.trt import require_cuda
from reblur_deploy.errors import DependencyError

from ._common import ExportResult, Log, describe
from ._engine import outputs, prepare
from .verify import compare, eager_reference, profile_shapes

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
    torch_tensorrt = require_torch_tensorrt()  # first: without it or a GPU, stop here
    job = prepare(weights, role, fp16, profile, timing_cache, tolerance)
    lo, opt, hi = job.profile
    divisor = int(job.module.size_divisor)
    shapes = graphs.dynamic_shapes(
        divisor, batch=(lo[0], hi[0]), height=(lo[2], hi[2]), width=(lo[3], hi[3])
    )
    example = torch.rand(min(max(2, lo[0]), hi[0]), 3, opt[2], opt[3], device=job.device)
    program = graphs.export_program(job.module, fp16, job.device, example, shapes)
    log("compiling with Torch-TensorRT (this takes a while) ...")
    compiled = torch_tensorrt.dynamo.compile(
        program,
        arg_inputs=[
            torch_tensorrt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=torch.float32)
        ],
        min_block_size=1,
        timing_cache_path=str(job.timing_cache),
    )
    meta = describe(job.module, job.loaded, role, job.precision) | {
        "format": "torch-tensorrt-exported-program",
        "profile": {"min": lo, "opt": opt, "max": hi},
        "torch_tensorrt_version": torch_tensorrt.__version__,
        "cuda_version": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(job.device),
    }
    with outputs(out, job) as (tmp, write_sidecar):
        torch_tensorrt.save(
            compiled,
            str(tmp),
            output_format="exported_program",
            arg_inputs=[example],
            dynamic_shapes=shapes,
            retrace=True,
        )
        reloaded = torch_tensorrt.load(str(tmp)).module()  # verify what was written

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return reloaded(x)

        reference = eager_reference(job.module, job.device)
        checks = compare(reference, run, profile_shapes(job.profile), job.tolerance, job.device)
        meta["parity"] = {"tolerance": job.tolerance, "checks": [str(c) for c in checks]}
        write_sidecar(meta)
    details = {"sidecar": f"{out}.json"}
    return ExportResult(Path(out), "torch-tensorrt", job.precision, job.tolerance, checks, details)
