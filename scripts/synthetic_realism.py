"""How close is the synthetic blur to real motion blur? The same scenes, blurred both ways.

    python scripts/synthetic_realism.py [--data ../shared/data/gopro] [--seeds 3] [SYN OPTIONS]

For each GOPRO pair, the real blurry frame and ``--seeds`` synthetic blurs of its sharp frame
(``train.synthetic.synthesize`` with the options of ``train.main``: --syn-shift, --syn-frames,
...) are compared with the sharp frame: PSNR, NIQE and the variance of the Laplacian (a crude
sharpness figure), each as a range and a mean. Full frames.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from reblur_deploy.io import read_image
from reblur_deploy.metrics import niqe, psnr
from reblur_deploy.train.synthetic import BlurParams, synthesize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gopro"


def laplacian_variance(image: np.ndarray) -> float:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with blur/ and sharp/")
    parser.add_argument("--seeds", type=int, default=3, help="synthetic blurs per sharp frame")
    parser.add_argument("--syn-frames", default="9,25")
    parser.add_argument("--syn-shift", type=float, default=24.0)
    parser.add_argument("--syn-rotation", type=float, default=1.0)
    parser.add_argument("--syn-zoom", type=float, default=0.01)
    parser.add_argument("--syn-noise", type=float, default=0.01)
    parser.add_argument("--syn-soften", type=float, default=1.0)
    args = parser.parse_args()
    lo, hi = (int(v) for v in args.syn_frames.split(","))
    params = BlurParams((lo, hi), args.syn_shift, args.syn_rotation, args.syn_zoom,
                        args.syn_noise, args.syn_soften)  # fmt: skip
    rows: dict[str, list[tuple[float, float, float]]] = {"real": [], "synthetic": [], "sharp": []}
    for path in sorted((args.data / "blur").glob("*.png")):
        sharp = read_image(args.data / "sharp" / path.name.replace("blur", "sharp"))
        real = read_image(path)
        rows["real"].append((psnr(real, sharp), niqe(real), laplacian_variance(real)))
        rows["sharp"].append((float("inf"), niqe(sharp), laplacian_variance(sharp)))
        for seed in range(args.seeds):
            blurry, target = synthesize(sharp, np.random.default_rng(seed), params)
            b8, t8 = (np.rint(x * 255).astype(np.uint8) for x in (blurry, target))
            rows["synthetic"].append((psnr(b8, t8), niqe(b8), laplacian_variance(b8)))
    print(f"{args.data} ({len(rows['real'])} pairs, {args.seeds} synthetic blurs each): {params}")
    print("| frames | PSNR to sharp (dB) | NIQE | Laplacian variance |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        cells = []
        for column in np.array(values).T:
            finite = column[np.isfinite(column)]
            if not len(finite):
                cells.append("—")
                continue
            cells.append(f"{finite.min():.2f}–{finite.max():.2f} (mean {finite.mean():.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
