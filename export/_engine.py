"""What the two engine exporters (TensorRT, Torch-TensorRT) prepare and write alike: the module,
its optimisation profile, precision and tolerance, the timing cache, and the artefact written
together with its JSON sidecar ``<out>.json``."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reblur_deploy.backends.trt import DEFAULT_PROFILE, check_profile, fit_profile
from reblur_deploy.errors import ConfigError
from reblur_deploy.weights import LoadedWeights

from ._common import atomic_output, load_module
from .verify import TOLERANCE


@dataclass
class EngineJob:
    module: nn.Module
    loaded: LoadedWeights
    profile: tuple  # (min, opt, max) N×3×H×W shapes
    precision: str  # fp16 or fp32
    tolerance: float  # max |Δ| against eager PyTorch
    timing_cache: Path
    device: torch.device


def default_timing_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "reblur-deploy" / "tensorrt-timing.cache"


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


def prepare(weights, role: str, fp16: bool, profile, timing_cache, tolerance) -> EngineJob:
    """The job of an engine export, with every default filled in (on the current GPU)."""
    module, loaded = load_module(weights, role)
    precision = "fp16" if fp16 else "fp32"
    cache = Path(timing_cache) if timing_cache else default_timing_cache()
    cache.parent.mkdir(parents=True, exist_ok=True)
    return EngineJob(
        module=module,
        loaded=loaded,
        profile=resolve_profile(profile, int(module.size_divisor)),
        precision=precision,
        tolerance=TOLERANCE[precision] if tolerance is None else tolerance,
        timing_cache=cache,
        device=torch.device("cuda", torch.cuda.current_device()),
    )


@contextlib.contextmanager
def outputs(out, job: EngineJob) -> Iterator[tuple[Path, Callable[[dict], None]]]:
    """A temporary path for the artefact and a function writing the sidecar; both get their
    final names (``out``, ``<out>.json``) only when the block succeeds."""
    sidecar = Path(f"{out}.json")
    with atomic_output(out, (job.loaded.path,)) as tmp, atomic_output(sidecar) as tmp_json:

        def write_sidecar(meta: dict) -> None:
            tmp_json.write_text(json.dumps(meta, indent=2) + "\n")

        yield tmp, write_sidecar
