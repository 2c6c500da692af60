"""``reblur-bench``: every speed claim of the project, measured as ratios in one run.

Sections (``--only`` picks some):

* ``peak``: the device's measured peak (a large matmul, fp32 and bf16 where the device has
  native bf16), the denominator of the "fraction of peak" columns.
* ``histmatch``: histogram matching of a 1280×720 RGB frame: ours (C++ on the CPU, CUDA on a
  GPU, and the pure-torch fallback) against scikit-image (float and uint8 paths) and the exact
  torch reference, with each result's error against the exact reference.
* ``resblock``: MR (the paper's reblurring module) forward + gradient with respect to its input,
  as test-time adaptation uses it: eager (cuDNN / oneDNN) vs ``torch.compile`` vs the fused
  Triton ResBlock (CUDA).
* ``tta``: one TTA step and an N-step TTA of one frame (Algorithm A, full frame and 4×256² crops):
  eager fp32 vs compiled vs (CUDA) compiled + bf16 + fused; seconds, peak memory, compile time.
* ``video``: test-time adaptation of a real clip (``BenchConfig.video``: a video file or a
  folder of frames) as ``reblur-run`` runs it, one Deblurrer per setting over the same frames in
  order: plain inference, per-frame Algorithm A, carry-over on whole frames and the video mode
  (``TTAConfig.for_video``), also with its carried frames matched to their own L0:
  seconds a frame and its ratio to plain inference, NIQE and the share of per-frame
  Algorithm A's NIQE gain kept (also with each output's tones matched to plain inference's),
  blur score, flicker.
* ``drift``: the video mode over a long shot with ground truth (``BenchConfig.drift``: a
  sequence of frame pairs played forwards and backwards to ``drift_frames`` frames) against
  per-frame Algorithm A: PSNR per block, so that drift over the shot shows.
* ``infer``: inference of MD per backend (torch eager in fp32 and bf16 autocast, compiled, ONNX
  Runtime, TensorRT when present) per size and batch: frames per second, peak memory, FLOPs per
  frame (``torch.utils.flop_counter``) and the achieved fraction of the measured peak of the
  precision; which engine ``auto`` (the default) picks, and its speed-up over eager fp32.
* ``profile``: where eager inference spends its time, layer by layer (milliseconds, share,
  FLOPs, fraction of peak, fp32 and bf16), and what cheap settings buy (channels-last, ONNX
  Runtime's threads).

The networks are the paper's U-Net and MR with random output layers, or with
``BenchConfig(weights=...)`` a trained file's (a bundled name works too).

``run(BenchConfig(...))`` returns a JSON-able dict; ``to_markdown`` renders it. One module
per section (its ``measure`` and its ``markdown``); ``timing`` holds the timer and the peak
memory probe, ``machine`` the machine description, ``networks`` the networks measured. Timings are
medians of ``repeats`` runs after a warm-up (CUDA timings synchronise the device). Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and, on the CPU, the largest increase of the
process's resident set (sampled every 2 ms), both from before the warm-up: an engine allocates
its buffers and arenas in its first call and reuses them after, so memory measured from after
the warm-up would show almost nothing.
"""

from __future__ import annotations

import dataclasses
import time

from ..device import resolve_device
from ..errors import ConfigError
from . import drift, histmatch, infer, peak, profile, resblock, tta, video
from .config import SECTIONS, SIZES, BenchConfig, parse_sizes, size_name
from .machine import machine_info
from .report import header
from .timing import timed

MODULES = {
    "peak": peak,
    "histmatch": histmatch,
    "resblock": resblock,
    "tta": tta,
    "video": video,
    "drift": drift,
    "infer": infer,
    "profile": profile,
}


def run(config: BenchConfig) -> dict:
    """Measure ``config.sections`` in their fixed order (the caller's config is left as it is)."""
    device = resolve_device(config.device)
    if config.sizes is None:
        # 720p/1080p TTA takes minutes per step on a CPU: there the default is 256² only
        sizes = (SIZES["256"], SIZES["720p"], SIZES["1080p"]) if device.type == "cuda" else None
        config = dataclasses.replace(config, sizes=sizes or (SIZES["256"],))
    unknown = set(config.sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section {', '.join(sorted(unknown))}; choose from {SECTIONS}")
    log = config.log or (lambda message: None)
    report: dict = {
        "machine": machine_info(device),
        "quick": config.quick,
        "sizes": [size_name(s) for s in config.sizes],
        "sections": {},
    }
    for name, module in MODULES.items():
        if name not in config.sections:
            continue
        log(f"reblur-bench: {name} ...")
        start = time.perf_counter()
        result = module.measure(device, config, report["sections"])
        result["seconds"] = time.perf_counter() - start
        report["sections"][name] = result
    return report


def to_markdown(report: dict) -> str:
    """The run as Markdown: its header, then each measured section's tables."""
    lines = header(report)
    for name, section in report["sections"].items():
        lines += MODULES[name].markdown(section)
    return "\n".join(lines).rstrip() + "\n"


__all__ = [
    "SECTIONS",
    "SIZES",
    "BenchConfig",
    "parse_sizes",
    "run",
    "size_name",
    "timed",
    "to_markdown",
]
