"""``video``: test-time adaptation of a real clip (``BenchConfig.video``: a video file or a
folder of frames) as ``reblur-run`` runs it, one Deblurrer per setting over the same frames in
order: plain inference, per-frame Algorithm A, carry-over on whole frames and the video mode
(``TTAConfig.for_video``), also with its carried frames matched to their own L0:
seconds a frame and its ratio to plain inference, NIQE and the share of per-frame
Algorithm A's NIQE gain kept (also with each output's tones matched to plain inference's),
blur score, flicker; and the video mode's cost against plain inference with the clip's frames
scaled to each of ``BenchConfig.video_sizes`` (360p to 1080p)."""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .config import BenchConfig
from .report import ending, section
from .timing import sync


def _clip_frames(path: str, count: int) -> list[np.ndarray]:
    from ..io import is_image, read_frames, read_image

    folder = Path(path)
    if folder.is_dir():
        names = sorted(p for p in folder.iterdir() if is_image(p))
        return [read_image(p) for p in names[:count]]
    return [frame.rgb for frame in read_frames(folder, 0, count)]


def _timed(deblurrer, frame: np.ndarray, device: torch.device):
    """deblurrer(frame) and the seconds it took."""
    start = time.perf_counter()
    out = deblurrer(frame)
    sync(device)
    return out, time.perf_counter() - start


def _timed_frames(deblurrer, frames: list[np.ndarray], device: torch.device, plain=None):
    """Run the frames in order: outputs, and per frame seconds, ratio to plain and TTA steps.
    With ``plain`` (a Deblurrer without TTA) each frame is also inferred plainly just before,
    and the ratio is against that: this VM's speed drifts over the minutes a setting takes, and
    affects a frame and its plain twin alike."""
    outputs, seconds, ratios, steps = [], [], [], []
    for frame in frames:
        if plain is not None:
            _, base = _timed(plain, frame, device)
        out, took = _timed(deblurrer, frame, device)
        outputs.append(out)
        seconds.append(took)
        ratios.append(took / base if plain is not None else 1.0)
        steps.append(sum(deblurrer.tta_stats.steps) if deblurrer.tta_stats else 0)
    return outputs, seconds, ratios, steps


def _run(deblurrer, frames: list[np.ndarray], device: torch.device, plain=None) -> dict:
    """One setting's figures over the frames (``_timed_frames``); times and ratios are medians
    without the first frame."""
    from ..eval import flicker
    from ..losses import blur_score
    from ..metrics import niqe

    outputs, seconds, ratios, steps = _timed_frames(deblurrer, frames, device, plain)
    changes = [
        flicker(outputs[i], outputs[i - 1], frames[i], frames[i - 1]) for i in range(1, len(frames))
    ]
    return {
        "outputs": outputs,
        "s_per_frame": statistics.median(seconds[1:]),
        "cost_vs_plain": statistics.median(ratios[1:]),
        "first_frame_s": seconds[0],
        "steps_per_frame": statistics.median(steps[1:]),
        "niqe": float(np.mean([niqe(y) for y in outputs])),
        "blur_score": float(np.mean([blur_score(y, deblurrer.reblur) for y in outputs])),
        "flicker": float(np.mean(changes)),
    }


def measure(device: torch.device, config: BenchConfig, done: dict) -> dict:
    """Video TTA as ``reblur-run clip --tta N`` runs it (see the module docstring). Seconds a
    frame leave out the first frame, which gets every step in the carried settings; NIQE,
    blur score (under the weights' MR) and flicker (``eval.flicker`` against the inputs) are
    means over all frames."""
    from ..pipeline import Deblurrer, default_weights
    from ..tta import TTAConfig, recommended_lr
    from ..weights import load_weights

    if not config.video:
        return {"rows": [], "notes": ["not measured: no clip given (--video)"]}
    frames = _clip_frames(config.video, config.video_frames)
    if len(frames) < 3:
        raise ConfigError(f"{config.video}: the video section needs at least 3 frames")
    weights = config.weights or default_weights(device)
    # the rate these runs use and the report names: the given one, else the weights' own
    lr = config.tta_lr or recommended_lr(load_weights(weights).metadata)
    algorithm_a = TTAConfig(steps=config.steps, lr=lr)
    settings = [
        ("no TTA", None),
        (f"per frame, {config.steps} steps", algorithm_a),
        ("carry-over, whole frames", dataclasses.replace(algorithm_a, carry=1)),
        ("video mode", algorithm_a.for_video()),
        # what the video mode's default of not matching carried frames saves and changes
        (
            "video mode, carried frames matched",
            dataclasses.replace(algorithm_a, match_carried=True).for_video(),
        ),
    ]
    # Plain inference in eager PyTorch, the engine TTA runs in, so that a ratio is TTA's cost
    # alone (the default engine's own speed-up is the infer section's).
    plain = Deblurrer(weights, device=device, batch_size=1, backend="torch")
    plain(frames[0])  # first-call costs (allocator, oneDNN primitives) stay out
    rows = []
    for name, tta in settings:
        if tta is None:
            rows.append({"setting": name, **_run(plain, frames, device)})
            continue
        deblurrer = Deblurrer(weights, device=device, tta=tta, batch_size=1)
        rows.append({"setting": name, **_run(deblurrer, frames, device, plain)})
        del deblurrer
        gc.collect()
    plain_outputs = rows[0]["outputs"]
    for row in rows:
        row["niqe_tones_matched"] = _niqe_in_tones_of(row.pop("outputs"), plain_outputs)
    notes = _add_gains_kept(rows)
    by_size = [_video_mode_cost(weights, algorithm_a.for_video(), frames, size, device)
               for size in config.video_sizes]  # fmt: skip
    h, w = frames[0].shape[:2]
    return {
        "clip": str(config.video),
        "frames": len(frames),
        "size": f"{w}×{h}",
        "weights": str(weights),
        "steps": config.steps,
        "lr": lr,
        "rows": rows,
        "by_size": by_size,
        "notes": notes,
    }


def _video_mode_cost(weights, video, frames: list[np.ndarray], size: tuple[int, int],
                     device: torch.device) -> dict:  # fmt: skip
    """The video mode's seconds a frame and cost against plain (eager) inference, the clip's
    first frames scaled to ``size``."""
    import cv2

    from ..pipeline import Deblurrer

    height, width = size
    scaled = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames[:6]]
    plain = Deblurrer(weights, device=device, batch_size=1, backend="torch")
    plain(scaled[0])
    deblurrer = Deblurrer(weights, device=device, batch_size=1, tta=video)
    _, seconds, ratios, _ = _timed_frames(deblurrer, scaled, device, plain)
    count, side = video.crop_plan(height, width, deblurrer.tta_config.crop)
    crop_h, crop_w = min(side, height), min(side, width)
    return {
        "size": f"{width}×{height}",
        "crops": f"{count} × {crop_h}×{crop_w}",
        "adapted_share": count * crop_h * crop_w / (height * width),
        "s_per_frame": statistics.median(seconds[1:]),
        "cost_vs_plain": statistics.median(ratios[1:]),
    }


def _add_gains_kept(rows: list[dict]) -> list[str]:
    """Each row's share of the NIQE gain of per-frame Algorithm A (rows[1]) over no TTA
    (rows[0]), plain and with tones matched; notes where that gain is not there."""
    notes = []
    for key in ("niqe", "niqe_tones_matched"):
        gain = rows[0][key] - rows[1][key]
        if gain <= 0:  # a share of a gain that is not there would read as a result
            notes.append(
                f"per-frame Algorithm A does not lower {key} on these frames ({gain:+.4f}): "
                "the share of its gain kept is not defined"
            )
        for row in rows:
            row[f"{key}_gain_kept"] = (rows[0][key] - row[key]) / gain if gain > 0 else None
    return notes


def _niqe_in_tones_of(outputs: list[np.ndarray], plain: list[np.ndarray]) -> float:
    """Mean NIQE of the outputs after matching each one's histograms to plain inference's
    output of the same frame: a setting's NIQE change without its change of tone, which
    Algorithm A's own matching removes and carried weights keep. Matched exactly in float and
    rounded back to the frames' integer type: uint8 matching truncates, and a level of
    truncation moves NIQE by as much as TTA does here (0.02–0.03)."""
    from ..histmatch import match_histograms
    from ..metrics import niqe

    top = np.iinfo(outputs[0].dtype).max  # the frames' integer type (8 or 16 bits)

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image.astype(np.float64) / top).permute(2, 0, 1)[None]

    matched = [
        match_histograms(tensor(y), tensor(p), exact=True)[0].permute(1, 2, 0).numpy()
        for y, p in zip(outputs, plain, strict=True)
    ]
    return float(np.mean([niqe(np.rint(y * top).astype(outputs[0].dtype)) for y in matched]))


def markdown(s: dict) -> list[str]:
    if not s["rows"]:
        return ending(s)
    columns = [
        ("setting", "setting"),
        ("steps_per_frame", "steps/frame"),
        ("s_per_frame", "s/frame"),
        ("cost_vs_plain", "× plain inference"),
        ("first_frame_s", "first frame, s"),
        ("niqe", "NIQE"),
        ("niqe_gain_kept", "NIQE gain kept"),
        ("niqe_tones_matched", "NIQE, tones matched"),
        ("niqe_tones_matched_gain_kept", "gain kept, tones matched"),
        ("blur_score", "blur score"),
        ("flicker", "flicker"),
    ]
    digits = {"niqe": 3, "niqe_tones_matched": 3, "flicker": 4}
    caption = (
        f"**Video TTA** ({s['weights']}, {s['frames']} frames of {s['clip']}, "
        f"{s['size']}, TTA lr {s['lr']:g}; s/frame is the median without the first frame; "
        "× plain inference: the median of each frame's time over that of plain inference "
        "of the same frame, run just before it; "
        "NIQE gain kept: the share of per-frame Algorithm A's NIQE gain over no TTA; "
        "tones matched: the same after matching each output's histograms to plain "
        "inference's output of the frame, so that a change of tone counts for nothing; "
        "flicker: the mean change between consecutive outputs minus that of the inputs):"
    )
    sizes = (
        "The **video mode's cost per frame size** (the clip's first frames scaled; a carried "
        "frame against plain eager inference of the same frame, median):"
    )
    size_columns = [
        ("size", "size"),
        ("crops", "crops"),
        ("adapted_share", "share of the frame adapted"),
        ("s_per_frame", "s/frame"),
        ("cost_vs_plain", "× plain inference"),
    ]
    by_size = ["", *section(sizes, s["by_size"], size_columns)] if s.get("by_size") else []
    return section(caption, s["rows"], columns, digits) + by_size + ending(s)
