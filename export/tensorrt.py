"""TensorRT engine export (needs the tensorrt package and an NVIDIA GPU).

The network is exported to ONNX in memory (the fp16 graph by default: float16 weights and
arithmetic, float32 input and output), checked with ``onnx.checker``, built as a strongly typed
network with one optimisation profile (min/opt/max N×3×H×W) and a reusable timing cache, then
run on two shapes inside the profile against eager PyTorch (float32, TF32 off) before the engine
and its JSON sidecar (``<engine>.json``) get their final names.

BF16 and INT8 are not offered: they could not be verified for this release.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from reblur_deploy.backends import graphs
from reblur_deploy.backends.trt import TensorRTBackend, build_engine, import_tensorrt, require_cuda

from ._common import ExportResult, Log, describe
from ._engine import outputs, prepare
from .verify import VerificationError, compare, eager_reference, profile_shapes


def require_tensorrt(what: str = "reblur-export --to trt"):
    """The tensorrt module, or a DependencyError naming what to install (checked first, so a
    CPU machine stops before any work)."""
    trt = import_tensorrt()
    require_cuda(what)
    return trt


def gpu_facts(trt) -> dict:
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {
        "tensorrt_version": trt.__version__,
        "cuda_version": torch.version.cuda,
        "torch_version": torch.__version__,
        "gpu": torch.cuda.get_device_name(index),
        "compute_capability": f"{major}.{minor}",
    }


def export_tensorrt(
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
    """Build, verify and write a TensorRT engine and its JSON sidecar ``<out>.json``."""
    log = log or (lambda message: None)
    trt = require_tensorrt()  # first: a machine without TensorRT or a GPU stops here
    onnx = graphs.require_onnx()
    job = prepare(weights, role, fp16, profile, timing_cache, tolerance)
    proto, exporter = graphs.onnx_model(job.module, fp16=fp16)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise VerificationError(f"onnx.checker rejects the intermediate ONNX model: {e}") from None
    engine = build_engine(
        proto.SerializeToString(),
        job.profile,
        job.timing_cache,
        strict_fp32=not fp16,
        device=job.device,
        log=log,
    )
    backend = TensorRTBackend(job.module, job.device, torch.float32, engine=engine)
    reference = eager_reference(job.module, job.device)
    checks = compare(reference, backend.infer, profile_shapes(job.profile), job.tolerance,
                     job.device)  # fmt: skip
    lo, opt, hi = job.profile
    meta = describe(job.module, job.loaded, role, job.precision) | gpu_facts(trt)
    meta |= {
        "format": "tensorrt-engine",
        "profile": {"min": lo, "opt": opt, "max": hi},
        "strongly_typed": True,
        "tf32": fp16,  # TF32 is left on for fp16 engines, turned off for fp32 ones
        "timing_cache": str(job.timing_cache),
        "exporter": exporter,
        "parity": {"tolerance": job.tolerance, "checks": [str(c) for c in checks]},
    }
    with outputs(out, job) as (tmp, write_sidecar):
        tmp.write_bytes(engine)
        write_sidecar(meta)
    details = {"sidecar": f"{out}.json", "timing cache": str(job.timing_cache)}
    return ExportResult(Path(out), "tensorrt", job.precision, job.tolerance, checks, details)
