"""TensorRT engine export (needs the tensorrt package and an NVIDIA GPU).

The network is exported to ONNX in memory (the fp16 graph by default: float16 weights and
arithmetic, float32 input and output), checked with ``onnx.checker``, built as a strongly typed
network with one optimisation profile (min/opt/max N×3×H×W) and a reusable timing cache, then
run on two shapes inside the profile against eager PyTorch (float32, TF32 off) before the engine
and its JSON sidecar (``<engine>.json``) get their final names.

BF16 and INT8 are not offered: they could not be verified for this release.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from reblur_deploy.backends import graphs
from reblur_deploy.backends.trt import (
    DEFAULT_PROFILE,
    TensorRTBackend,
    build_engine,
    check_profile,
    fit_profile,
    import_tensorrt,
    require_cuda,
)
from reblur_deploy.errors import ConfigError

from ._common import ExportResult, Log, atomic_output, describe, load_module
from .verify import TOLERANCE, VerificationError, compare, eager_reference, profile_shapes


def default_timing_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reblur-deploy" / "tensorrt-timing.cache"


def require_tensorrt(what: str = "reblur-export --to trt"):
    """The tensorrt module, or a DependencyError naming what to install (checked first, so a
    CPU machine stops before any work)."""
    trt = import_tensorrt()
    require_cuda(what)
    return trt


def resolve_profile(profile, size_divisor: int):
    """(min, opt, max) shapes: those given (entries may be None) checked against the divisor,
    the defaults (rounded up to the divisor) for the rest."""
    defaults = fit_profile(DEFAULT_PROFILE, size_divisor)
    given = tuple(profile) if profile is not None else (None, None, None)
    if len(given) != 3:
        raise ConfigError(f"a profile is (min, opt, max) shapes, got {profile}")
    profile = tuple(tuple(s) if s is not None else d for s, d in zip(given, defaults, strict=True))
    check_profile(profile, size_divisor)
    return profile


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
    trt = require_tensorrt()
    onnx = graphs.require_onnx()
    module, loaded = load_module(weights, role)
    divisor = int(module.size_divisor)
    profile = resolve_profile(profile, divisor)
    precision = "fp16" if fp16 else "fp32"
    tolerance = TOLERANCE[precision] if tolerance is None else tolerance
    timing_cache = Path(timing_cache) if timing_cache else default_timing_cache()

    proto, exporter = graphs.onnx_model(module, fp16=fp16)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise VerificationError(f"onnx.checker rejects the intermediate ONNX model: {e}") from None
    device = torch.device("cuda", torch.cuda.current_device())
    engine = build_engine(
        proto.SerializeToString(),
        profile,
        timing_cache,
        strict_fp32=not fp16,
        device=device,
        log=log,
    )
    backend = TensorRTBackend(module, device, torch.float32, engine=engine)
    checks = compare(
        eager_reference(module, device), backend.infer, profile_shapes(profile), tolerance, device
    )
    sidecar = describe(module, loaded, role, precision) | gpu_facts(trt)
    sidecar |= {
        "format": "tensorrt-engine",
        "profile": {"min": profile[0], "opt": profile[1], "max": profile[2]},
        "strongly_typed": True,
        "tf32": fp16,  # TF32 is left on for fp16 engines, turned off for fp32 ones
        "timing_cache": str(timing_cache),
        "exporter": exporter,
        "parity": {"tolerance": tolerance, "checks": [str(c) for c in checks]},
    }
    sidecar_path = Path(f"{out}.json")
    with atomic_output(out, (loaded.path,)) as tmp, atomic_output(sidecar_path) as tmp_json:
        tmp.write_bytes(engine)
        tmp_json.write_text(json.dumps(sidecar, indent=2) + "\n")
    details = {"sidecar": str(sidecar_path), "timing cache": str(timing_cache)}
    return ExportResult(out, "tensorrt", precision, tolerance, checks, details)
