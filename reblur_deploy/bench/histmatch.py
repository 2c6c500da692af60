"""``histmatch``: histogram matching of a 1280×720 RGB frame: ours (C++ on the CPU, CUDA on a
GPU, and the pure-torch fallback) against scikit-image (float and uint8 paths) and the exact
torch reference, with each result's error against the exact reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import BenchConfig
from .report import table
from .timing import timed


def _sample_frames(size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """TTA's matching problem on the bundled GOPRO crop scaled to ``size``: a reference like a
    network's initial output L0 (the frame, slightly smoothed: float values) and a source like
    the adapted output LN (L0 sharpened, plus faint noise)."""
    import cv2

    from ..io import read_image

    sample = Path(__file__).parents[1] / "assets" / "samples" / "gopro_blur_00_crop.png"
    image = cv2.resize(read_image(sample), (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    reference = cv2.GaussianBlur(image.astype(np.float32) / 255, (0, 0), 0.7)
    detail = reference - cv2.GaussianBlur(reference, (0, 0), 1.0)
    noise = np.random.default_rng(seed).normal(0, 0.001, reference.shape).astype(np.float32)
    return (reference + 0.3 * detail + noise).astype(np.float32), reference


def measure(device: torch.device, config: BenchConfig, done: dict) -> dict:
    from skimage.exposure import match_histograms as skimage_match

    from .. import kernels
    from ..histmatch import (
        TOLERANCE,
        match_histograms,
        match_histograms_binned,
        match_histograms_fast,
    )

    source, reference = _sample_frames(config.hist_size)
    source8 = np.rint(source * 255).astype(np.uint8)
    reference8 = np.rint(reference * 255).astype(np.uint8)

    def tensor(a: np.ndarray, dev: torch.device) -> torch.Tensor:
        return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous().to(dev)

    cpu = torch.device("cpu")
    exact_cpu = match_histograms(tensor(source, cpu), tensor(reference, cpu), exact=True)
    exact8 = match_histograms(tensor(source8, cpu), tensor(reference8, cpu), exact=True)
    repeats = max(3, config.repeats)
    rows = []

    def add(name, dev, dtype, fn, expected=None, bound=None):
        seconds, _ = timed(fn, dev, repeats)
        row = {"implementation": name, "device": dev.type, "input": dtype, "ms": seconds * 1e3}
        if expected is not None:
            result = fn()
            if isinstance(result, np.ndarray):
                result = torch.from_numpy(result).permute(2, 0, 1)[None]
            diff = (result.detach().cpu().double() - expected.double()).abs()
            scale = 255.0 if dtype == "float32" else 1.0
            row["max_error_255"] = float(diff.max()) * scale
            row["identical"] = bool((diff == 0).all())
        if bound is not None:
            row["bound_255"] = bound * 255
        rows.append(row)

    add(
        "scikit-image",
        cpu,
        "float32",
        lambda: skimage_match(source, reference, channel_axis=-1),
        exact_cpu,
    )
    add("scikit-image", cpu, "uint8", lambda: skimage_match(source8, reference8, channel_axis=-1))
    devices = [cpu] + ([device] if device.type == "cuda" else [])
    notes = []
    for dev in devices:
        s32, r32 = tensor(source, dev), tensor(reference, dev)
        s8, r8 = tensor(source8, dev), tensor(reference8, dev)
        add(
            "torch exact (exact=True)",
            dev,
            "float32",
            lambda s=s32, r=r32: match_histograms(s, r, exact=True),
        )
        add(
            "match_histograms (default)",
            dev,
            "float32",
            lambda s=s32, r=r32: match_histograms(s, r),
            exact_cpu,
        )
        impls = ["torch"]
        ok, why = kernels.ext_available(dev)
        if ok:
            impls.insert(0, "ext")
        else:
            notes.append(f"ext kernels on {dev.type}: {why}")
        for impl in impls:
            label = {
                "ext": "ours (C++)" if dev.type == "cpu" else "ours (CUDA)",
                "torch": "ours, torch ops",
            }[impl]
            _, bound = match_histograms_binned(s32, r32, implementation=impl)
            add(
                label,
                dev,
                "float32",
                lambda s=s32, r=r32, i=impl: match_histograms_fast(s, r, implementation=i),
                exact_cpu,
                float(bound.max()),
            )
            add(
                f"{label}, no fallback check",
                dev,
                "float32",
                lambda s=s32, r=r32, i=impl: match_histograms_binned(s, r, implementation=i)[0],
            )
            add(
                label,
                dev,
                "uint8",
                lambda s=s8, r=r8, i=impl: match_histograms_fast(s, r, implementation=i),
                exact8,
            )
    base = next(r["ms"] for r in rows if r["implementation"] == "scikit-image")
    for row in rows:
        row["speedup_vs_skimage_float"] = base / row["ms"]
    return {
        "size": f"{config.hist_size[1]}×{config.hist_size[0]} RGB",
        "tolerance_255": TOLERANCE * 255,
        "rows": rows,
        "notes": notes,
    }


def markdown(s: dict) -> list[str]:
    lines: list[str] = []
    lines += [
        f"**Histogram matching**, {s['size']}, TTA's case (reference: a frame smoothed "
        f"like a network's output, float values; source: the same sharpened, plus faint "
        f"noise; uint8 rows: both rounded to 8 bits). Error against the exact torch "
        f"reference in 8-bit levels (1/255); ours falls back to exact on planes whose proven "
        f"bound exceeds {s['tolerance_255']:.2f}/255:",
        "",
    ]
    lines += table(
        s["rows"],
        [
            ("implementation", "implementation"),
            ("device", "device"),
            ("input", "input"),
            ("ms", "ms"),
            ("speedup_vs_skimage_float", "× vs skimage float"),
            ("max_error_255", "max error"),
            ("bound_255", "bound"),
            ("identical", "identical"),
        ],
    )
    lines += [f"- {n}" for n in s.get("notes", [])] + [""]
    return lines
