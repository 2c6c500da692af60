"""``histmatch``: histogram matching of a 1280×720 RGB frame: ours (C++ on the CPU, CUDA on a
GPU, and the pure-torch fallback) against scikit-image (float and uint8 paths) and the exact
torch reference, with each result's error against the exact reference, and the headline ratio
(the public default against scikit-image's float path) from interleaved rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import BenchConfig
from .report import ending, section
from .timing import interleaved_ratio, timed


def sample_frames(size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """TTA's matching problem on the bundled GOPRO crop scaled to ``size``: a reference like a
    network's initial output L0 (the frame, slightly smoothed: float values) and a source like
    the adapted output LN (L0 sharpened, plus faint noise). scripts/histmatch_ab.py uses it too."""
    import cv2

    from ..io import read_image

    sample = Path(__file__).parents[1] / "assets" / "samples" / "gopro_blur_00_crop.png"
    image = cv2.resize(read_image(sample), (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    reference = cv2.GaussianBlur(image.astype(np.float32) / 255, (0, 0), 0.7)
    detail = reference - cv2.GaussianBlur(reference, (0, 0), 1.0)
    noise = np.random.default_rng(seed).normal(0, 0.001, reference.shape).astype(np.float32)
    return (reference + 0.3 * detail + noise).astype(np.float32), reference


def _tensor(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous().to(dev)


class _Rows(list):
    """The table's rows; ``add`` times ``fn`` and, given the exact result, measures its error."""

    def __init__(self, repeats: int):
        super().__init__()
        self.repeats = repeats

    def add(self, name, dev, dtype, fn, expected=None, bound=None) -> None:
        seconds, _ = timed(fn, dev, self.repeats)
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
        self.append(row)


def _binned_rows(rows: _Rows, dev, impl: str, frames: dict, exact: dict) -> None:
    """The binned matching through ``impl`` (ext or torch) on float32 and uint8 frames."""
    from ..histmatch import match_histograms_binned, match_histograms_fast

    label = {
        "ext": "ours (C++)" if dev.type == "cpu" else "ours (CUDA)",
        "torch": "ours, torch ops",
    }
    s32, r32 = (_tensor(a, dev) for a in frames["float32"])
    s8, r8 = (_tensor(a, dev) for a in frames["uint8"])
    _, bound = match_histograms_binned(s32, r32, implementation=impl)
    fast = match_histograms_fast
    rows.add(label[impl], dev, "float32", lambda: fast(s32, r32, implementation=impl),
             exact["float32"], float(bound.max()))  # fmt: skip
    rows.add(f"{label[impl]}, no fallback check", dev, "float32",
             lambda: match_histograms_binned(s32, r32, implementation=impl)[0])  # fmt: skip
    rows.add(label[impl], dev, "uint8", lambda: fast(s8, r8, implementation=impl), exact["uint8"])


def measure(device: torch.device, config: BenchConfig, done: dict) -> dict:
    from skimage.exposure import match_histograms as skimage_match

    from .. import kernels
    from ..histmatch import TOLERANCE, match_histograms

    source, reference = sample_frames(config.hist_size)
    frames = {
        "float32": (source, reference),
        "uint8": tuple(np.rint(a * 255).astype(np.uint8) for a in (source, reference)),
    }
    cpu = torch.device("cpu")
    exact = {
        kind: match_histograms(*(_tensor(a, cpu) for a in pair), exact=True)
        for kind, pair in frames.items()
    }
    rows = _Rows(max(3, config.repeats))
    for kind, (src, ref) in frames.items():
        expected = exact[kind] if kind == "float32" else None
        run = lambda s=src, r=ref: skimage_match(s, r, channel_axis=-1)  # noqa: E731
        rows.add("scikit-image", cpu, kind, run, expected)
    notes = []
    for dev in [cpu] + ([device] if device.type == "cuda" else []):
        s32, r32 = (_tensor(a, dev) for a in frames["float32"])
        rows.add("torch exact (exact=True)", dev, "float32",
                 lambda s=s32, r=r32: match_histograms(s, r, exact=True))  # fmt: skip
        rows.add("match_histograms (default)", dev, "float32",
                 lambda s=s32, r=r32: match_histograms(s, r), exact["float32"])  # fmt: skip
        ok, why = kernels.ext_available(dev)
        if not ok:
            notes.append(f"ext kernels on {dev.type}: {why}")
        elif dev.type == "cpu":
            notes.append(f"ext kernels on cpu: the {kernels.histmatch_lookup()} lookup, measured "
                         "fastest of those this CPU runs")  # fmt: skip
        for impl in (["ext"] if ok else []) + ["torch"]:
            _binned_rows(rows, dev, impl, frames, exact)
    base = rows[0]["ms"]  # scikit-image's float path
    for row in rows:
        row["speedup_vs_skimage_float"] = base / row["ms"]
    s32, r32 = (_tensor(a, cpu) for a in frames["float32"])
    interleaved = interleaved_ratio(
        lambda: skimage_match(source, reference, channel_axis=-1),
        lambda: match_histograms(s32, r32),
        rounds=max(40, 5 * config.repeats),
    )
    return {
        "size": f"{config.hist_size[1]}×{config.hist_size[0]} RGB",
        "tolerance_255": TOLERANCE * 255,
        "rows": list(rows),
        "interleaved": interleaved,
        "notes": notes,
    }


def markdown(s: dict) -> list[str]:
    after = []
    if "interleaved" in s:
        r = s["interleaved"]
        after.append(
            f"- `match_histograms` (default, CPU, float32) against scikit-image's float path, "
            f"one call of each per round (taking turns to go first), {r['rounds']} rounds: "
            f"**{r['median']:.1f}×** "
            f"(median; rounds {r['min']:.1f}–{r['max']:.1f}×)"
        )
    caption = (
        f"**Histogram matching**, {s['size']}, TTA's case (reference: a frame smoothed "
        f"like a network's output, float values; source: the same sharpened, plus faint "
        f"noise; uint8 rows: both rounded to 8 bits). Error against the exact torch "
        f"reference in 8-bit levels (1/255); ours falls back to exact on planes whose proven "
        f"bound exceeds {s['tolerance_255']:.2f}/255:"
    )
    return section(
        caption,
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
        after=after,
    ) + ending(s)
