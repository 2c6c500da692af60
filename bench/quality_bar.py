"""The quality bar of a bundled model, measured on the GOPRO pairs held out of training.

    python bench/quality_bar.py [--weights unet-lite --baseline unet-lite-l1] [--out FILE.md]
    python bench/quality_bar.py --weights unet-reblur --baseline unet-reblur-l1.safetensors

Rows: the blurry input, the L1-only baseline, the model trained with L1 + L_Reblur, and that
model with 5 TTA steps. Columns: PSNR, SSIM, NIQE and the blur score; every blur score is
measured with the model's MR, so the rows are comparable. The bars (exit status 1 when one fails):

1. the shipped model's PSNR is above the blurry input's on every held-out pair,
2. and higher by at least 1.0 dB on average;
3. the reblur-trained model has lower NIQE and blur score than the L1 baseline;
4. TTA 5 lowers NIQE further.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from reblur_deploy import Deblurrer, blur_score
from reblur_deploy.io import read_image, write_image
from reblur_deploy.metrics import niqe, psnr, ssim
from reblur_deploy.pipeline import array_to_tensor

HELD_OUT = ("blur_04.png", "461_blur.png")  # kept out of training (train.main --val names:...)
FIGURE_CROP = (120, 640)  # top, left in blur_04: fence posts, strong horizontal blur
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gopro"


def measure(rows: dict[str, list[np.ndarray]], sharp: list[np.ndarray], mr) -> dict[str, dict]:
    table = {}
    for name, images in rows.items():
        table[name] = {
            "psnr": [psnr(x, s) for x, s in zip(images, sharp, strict=True)],
            "ssim": float(np.mean([ssim(x, s) for x, s in zip(images, sharp, strict=True)])),
            "niqe": float(np.mean([niqe(x) for x in images])),
            "blur": float(np.mean([blur_score(array_to_tensor(x)[0], mr).item() for x in images])),
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder with blur/ and sharp/")
    parser.add_argument("--weights", default="unet-lite", help="the L1 + L_Reblur model")
    parser.add_argument("--baseline", default="unet-lite-l1", help="its L1-only twin")
    parser.add_argument("--tta", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument(
        "--figure",
        type=Path,
        help="also write a PNG of one 256² crop of blur_04: each row's image, then the sharp one",
    )
    args = parser.parse_args()

    blurry = [read_image(args.data / "blur" / name) for name in HELD_OUT]
    sharp = [read_image(args.data / "sharp" / name.replace("blur", "sharp")) for name in HELD_OUT]
    model = Deblurrer(args.weights, device="cpu")
    adapted = Deblurrer(args.weights, device="cpu", tta_steps=args.tta)
    baseline = Deblurrer(args.baseline, device="cpu")
    label = Path(args.weights).stem  # a bundled name stays as it is
    rows = {
        "blurry input": blurry,
        f"L1 baseline ({Path(args.baseline).stem})": baseline(blurry),
        f"L1 + L_Reblur ({label})": model(blurry),
        f"L1 + L_Reblur ({label}), TTA {args.tta}": [adapted(x) for x in blurry],
    }
    table = measure(rows, sharp, model.reblur)

    lines = [
        f"Held-out GOPRO pairs: {', '.join(HELD_OUT)}; blur score under the MR of {label}.",
        "",
        "| model | PSNR↑ | per pair | SSIM↑ | NIQE↓ | blur score↓ |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in table.items():
        pairs = " / ".join(f"{p:.2f}" for p in m["psnr"])
        lines.append(f"| {name} | {np.mean(m['psnr']):.2f} | {pairs} | {m['ssim']:.4f} | "
                     f"{m['niqe']:.3f} | {m['blur']:.2e} |")  # fmt: skip
    _, base, shipped, tta = table.values()
    gains = np.array(shipped["psnr"]) - np.array(table["blurry input"]["psnr"])
    bars = [
        ("PSNR above the input on every pair", bool((gains > 0).all()),
         "gains " + ", ".join(f"{g:+.2f} dB" for g in gains)),
        ("mean PSNR gain ≥ 1.0 dB", gains.mean() >= 1.0, f"{gains.mean():+.2f} dB"),
        ("reblur model: lower NIQE than the L1 baseline", shipped["niqe"] < base["niqe"],
         f"{shipped['niqe']:.3f} vs {base['niqe']:.3f}"),
        ("reblur model: lower blur score than the L1 baseline", shipped["blur"] < base["blur"],
         f"{shipped['blur']:.2e} vs {base['blur']:.2e}"),
        (f"TTA {args.tta} lowers NIQE further", tta["niqe"] < shipped["niqe"],
         f"{tta['niqe']:.3f} vs {shipped['niqe']:.3f}"),
    ]  # fmt: skip
    lines += ["", "| bar | result | numbers |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {numbers} |" for name, ok, numbers in bars]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.figure:
        top, left = FIGURE_CROP
        panels = [images[0] for images in rows.values()] + [sharp[0]]
        write_image(args.figure, np.hstack([x[top : top + 256, left : left + 256] for x in panels]))
    return 0 if all(ok for _, ok, _ in bars) else 1


if __name__ == "__main__":
    sys.exit(main())
