"""``drift``: the video mode over a long shot with ground truth, against per-frame Algorithm A.

The frame pairs of one real sequence (``BenchConfig.drift``: ``DIR/blur`` + ``DIR/sharp`` in
name order, e.g. REDS 027) are played forwards, backwards, forwards ... to make
``drift_frames`` frames (1,000 by default), which run through one Deblurrer in the video mode
(``TTAConfig.for_video``, what ``reblur-run clip --tta N`` does) as one shot. Each distinct
frame also runs once through per-frame Algorithm A and through plain inference. PSNR against
the sharp frames per block of one sequence length: drift would show as a video-mode column
that falls from block to block while the other two repeat."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..errors import ConfigError
from .config import BenchConfig
from .report import ending, section


def play_order(n: int, frames: int) -> list[int]:
    """Indices of ``frames`` frames of a sequence of ``n`` played forwards, then backwards, ..."""
    cycle = [*range(n), *reversed(range(n))]
    return [cycle[t % len(cycle)] for t in range(frames)]


def measure(device: torch.device, config: BenchConfig, done: dict) -> dict:
    from ..io import read_image
    from ..io.pairs import paired_data
    from ..metrics import psnr
    from ..pipeline import Deblurrer, default_weights
    from ..tta import TTAConfig, recommended_lr
    from ..weights import load_weights

    if not config.drift:
        return {"rows": [], "notes": ["not measured: no paired sequence given (--drift)"]}
    pairs = paired_data(config.drift)
    if len(pairs) < 2:
        raise ConfigError(f"{config.drift}: the drift section needs a sequence of frame pairs")
    blurry = [read_image(p.source) for p in pairs]
    sharp = [read_image(p.gt) for p in pairs]
    weights = config.weights or default_weights(device)
    # the rate these runs use and the report names: the given one, else the weights' own
    lr = config.tta_lr or recommended_lr(load_weights(weights).metadata)
    algorithm_a = TTAConfig(steps=config.steps, lr=lr)
    start = time.perf_counter()

    def scores(tta: TTAConfig | None, order: list[int]) -> list[float]:
        deblurrer = Deblurrer(weights, device=device, tta=tta, batch_size=1)
        return [psnr(deblurrer(blurry[i]), sharp[i]) for i in order]

    n = len(pairs)
    order = play_order(n, config.drift_frames)
    plain = scores(None, list(range(n)))
    per_frame = scores(algorithm_a, list(range(n)))
    video = scores(algorithm_a.for_video(), order)
    rows = []
    for block in range(0, len(order), n):
        ids = order[block : block + n]
        row = {
            "frames": f"{block}–{block + len(ids) - 1}",
            "video_mode": float(np.mean(video[block : block + n])),
            "per_frame": float(np.mean([per_frame[i] for i in ids])),
            "no_tta": float(np.mean([plain[i] for i in ids])),
        }
        row["video_minus_per_frame"] = row["video_mode"] - row["per_frame"]
        rows.append(row)
    h, w = blurry[0].shape[:2]
    return {
        "clip": str(config.drift),
        "distinct_frames": n,
        "frames": len(order),
        "size": f"{w}×{h}",
        "weights": str(weights),
        "steps": config.steps,
        "lr": lr,
        "rows": rows,
        "lowest_db": min(r["video_minus_per_frame"] for r in rows),
        "run_seconds": time.perf_counter() - start,
        "notes": [],
    }


def markdown(s: dict) -> list[str]:
    if not s["rows"]:
        return ending(s)
    caption = (
        f"**Drift of the video mode** ({s['weights']}, {s['steps']} steps, TTA lr "
        f"{s['lr']:g}; {s['distinct_frames']} frame pairs of {s['clip']}, {s['size']}, "
        f"played forwards and backwards as one {s['frames']}-frame shot; PSNR against the "
        "sharp frames per block; per-frame Algorithm A and no TTA run each distinct frame "
        "once):"
    )
    lowest = (
        f"- video − Algorithm A: lowest {s['lowest_db']:+.3f} dB (drift would make it "
        f"fall from block to block; the shot's first frames start from the original "
        f"weights); {s['run_seconds']:.0f} s in all"
    )
    columns = [
        ("frames", "frames"),
        ("video_mode", "video mode, dB"),
        ("per_frame", "per-frame Algorithm A, dB"),
        ("no_tta", "no TTA, dB"),
        ("video_minus_per_frame", "video − Algorithm A, dB"),
    ]
    digits = {"video_mode": 3, "per_frame": 3, "no_tta": 3, "video_minus_per_frame": 3}
    return section(caption, s["rows"], columns, digits, after=[lowest]) + ending(s)
