"""Drift of video-mode TTA over a long real clip, against per-frame Algorithm A.

REDS 027 (100 real blurry/sharp frame pairs, 320×180) played forwards, backwards, forwards ...
to make ``--frames`` frames (1,000 by default) runs through one Deblurrer in the video mode
(``TTAConfig(steps=5, lr=LR).for_video()``, what ``reblur-run clip --tta 5`` does); each of the
100 distinct frames also runs through per-frame Algorithm A and through plain inference. Prints
the PSNR against the sharp frames per block of 100 frames, so that drift over the clip shows as
a falling video-mode column. About 5 minutes on 2 CPU cores.

    python bench/long_clip_drift.py [--data ../shared/data] [--frames 1000] [--lr 3e-6]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from reblur_deploy import Deblurrer, TTAConfig
from reblur_deploy.io import read_image
from reblur_deploy.metrics import psnr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=3e-6)
    parser.add_argument("--weights", default="unet-lite")
    args = parser.parse_args()
    root = Path(args.data) / "train" / "reds027_x4"
    names = sorted(p.name for p in (root / "blur").iterdir())
    blurry = [read_image(root / "blur" / n) for n in names]
    sharp = [read_image(root / "sharp" / n) for n in names]
    n = len(names)
    cycle = [*range(n), *reversed(range(n))]
    order = [cycle[t % len(cycle)] for t in range(args.frames)]

    config = TTAConfig(steps=5, lr=args.lr)
    start = time.perf_counter()
    plain = Deblurrer(args.weights, device="cpu")
    no_tta = [psnr(plain(b), s) for b, s in zip(blurry, sharp, strict=True)]
    per_frame_runner = Deblurrer(args.weights, device="cpu", tta=config)
    per_frame = [psnr(per_frame_runner(b), s) for b, s in zip(blurry, sharp, strict=True)]
    video = Deblurrer(args.weights, device="cpu", tta=config.for_video())
    scores = [psnr(video(blurry[i]), sharp[i]) for i in order]
    seconds = time.perf_counter() - start
    print(f"{args.weights}, lr {args.lr}, {args.frames} frames, {seconds:.0f} s")
    print("| frames | video mode | per-frame Algorithm A | no TTA | video − Algorithm A |")
    print("|---|---:|---:|---:|---:|")
    for block in range(0, args.frames, n):
        ids = order[block : block + n]
        v = float(np.mean(scores[block : block + n]))
        a = float(np.mean([per_frame[i] for i in ids]))
        p = float(np.mean([no_tta[i] for i in ids]))
        print(f"| {block}–{block + len(ids) - 1} | {v:.3f} | {a:.3f} | {p:.3f} | {v - a:+.3f} |")


if __name__ == "__main__":
    main()
