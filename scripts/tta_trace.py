"""What TTA's steps do to the figure they minimise, frame by frame (docs/TTA.md).

    python scripts/tta_trace.py --weights campaigns/x4/joint/last.safetensors \
        --data runs/x4/gopro --data runs/x4/gopro_more --scale 1 --scale 2 --lr 3e-6

For every held-out pair (as ``scripts/quality_bar.py`` chooses them) and every ``--scale``:
Algorithm A's loss at each step (MR judging at that scale), then the blur score, at every
scale given, NIQE and the PSNR of L0 = MD(B), of LN (the last step's weights, unmatched) and of
LN matched to L0's histograms (what TTA returns). One Markdown table of means, and the share of
frames on which each figure fell from L0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from reblur_deploy import Deblurrer, TTAConfig, blur_score
from reblur_deploy.histmatch import match_histograms
from reblur_deploy.io import array_to_tensor, read_image, tensor_to_array
from reblur_deploy.metrics import niqe
from reblur_deploy.metrics.distortion import psnr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_bar import DATA, held_out


def trace(deblurrer: Deblurrer, blurry: torch.Tensor, config: TTAConfig) -> dict:
    """L0, LN unmatched, LN matched and the loss per step of one frame."""
    adapter = deblurrer._make_adapter(config)
    with torch.no_grad():
        initial = adapter._full_forward(blurry).clamp(0, 1)
    run = adapter._adapt(blurry, config.steps, None, restore=True, match=False)
    latest = run.image
    matched = match_histograms(latest, initial, exact=True).clamp(0, 1)
    return {"L0": initial, "LN": latest, "LN matched": matched, "losses": run.losses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", type=Path, action="append", help="pair folders")
    parser.add_argument("--scale", type=int, action="append",
                        help="scales MR judges at [the frame's: losses.blur_scale]")  # fmt: skip
    parser.add_argument("--lr", type=float, default=None, help="TTA rate [the weights' own]")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    scales = args.scale or [None]  # None: the default of the frame's size
    pairs = held_out(args.weights, args.data or DATA)
    deblurrer = Deblurrer(args.weights, device="cpu", backend="torch")  # TTA needs eager
    rows = []
    for tta_scale in scales:
        config = TTAConfig(steps=args.steps, lr=args.lr, scale=tta_scale)
        figures: dict[str, list] = {}
        for pair in pairs:
            blurry, layout = array_to_tensor(read_image(pair.source))
            sharp = read_image(pair.gt)
            run = trace(deblurrer, blurry, config)
            losses = run.pop("losses")
            figures.setdefault("loss", []).append(losses[-1] / losses[0])
            for name, image in run.items():
                for s in scales:
                    score = float(blur_score(image, deblurrer.reblur, s)[0])
                    figures.setdefault(f"{name} blur@{s or 'auto'}", []).append(score)
                array = tensor_to_array(image[0], layout)
                figures.setdefault(f"{name} PSNR", []).append(psnr(array, sharp))
                figures.setdefault(f"{name} NIQE", []).append(niqe(array))
        rows.append((tta_scale, figures))
    print(
        f"{args.weights}, {len(pairs)} held-out frames, {args.steps} steps at lr "
        f"{config.lr or 'the weights’ own'}; blur@s: blur score with MR judging at 1/s\n"
    )
    print("| TTA at 1/s | loss N/0 | figure | L0 | LN | LN matched | LN lower | matched lower |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for tta_scale, f in rows:
        loss = np.mean(f["loss"])
        keys = [f"blur@{s or 'auto'}" for s in scales] + ["NIQE", "PSNR"]
        for key in keys:
            l0, ln, lm = (np.array(f[f"{n} {key}"]) for n in ("L0", "LN", "LN matched"))
            sign = 1 if key == "PSNR" else -1  # higher PSNR is better, lower anything else
            fmt = {"PSNR": "{:.2f}", "NIQE": "{:.3f}"}.get(key, "{:.3e}")
            print(
                f"| {tta_scale or 'auto'} | {loss:.3f} | {key} | {fmt.format(l0.mean())} | "
                f"{fmt.format(ln.mean())} | {fmt.format(lm.mean())} | "
                f"{np.mean(sign * (ln - l0) > 0):.0%} | {np.mean(sign * (lm - l0) > 0):.0%} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
