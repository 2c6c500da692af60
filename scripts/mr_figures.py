"""MR's three figures for several reblurring modules, on the same deblurred frames, at scales.

    python scripts/mr_figures.py --md campaigns/unet-lite/stages/base/last.safetensors \
        --mr campaigns/unet-lite/stages/mr/last.safetensors --mr runs/mr_n4/last.safetensors \
        --scale 1 --scale 2

The frames are the held-out pairs (default: every pair of ../shared/data/gopro, and
gopro_more's Flower), deblurred once by the MD of ``--md``; each ``--mr`` file's MR then scores
(blurry B, deblurred L, sharp S) with ``train.figures.mr_figures``: how much of the blur it
re-creates from L (``mr_gain``), on how many frames it ranks B > L > S, and the median B/S of
its blur scores, MR judging the frames shrunk by each ``--scale``. One Markdown row per MR and
scale. The issue-27 study of MR for long blur (docs/TRAINING.md) is made with it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reblur_deploy import Deblurrer, load_weights
from reblur_deploy.io import array_to_tensor, read_image
from reblur_deploy.io.pairs import paired_data
from reblur_deploy.train.figures import mr_figures, summarize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def held_out_pairs(folders: list[Path], extra: list[str]) -> list:
    """Every pair of the first folder, and the pairs named ``extra`` of the others."""
    pairs = list(paired_data(folders[0]))
    for folder in folders[1:]:
        pairs += [pair for pair in paired_data(folder) if pair.name in extra]
    return pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--md", required=True, help="weights whose MD deblurs the frames")
    parser.add_argument("--mr", action="append", required=True, help="weights of an MR; repeat")
    parser.add_argument("--scale", type=int, action="append", help="MR judges at 1/SCALE")
    parser.add_argument("--data", type=Path, action="append",
                        help="paired folders: all of the first, --names of the others "
                             "[default: ../shared/data/gopro, gopro_more]")  # fmt: skip
    parser.add_argument("--names", default="Flower_blur.png", help="comma-separated")
    args = parser.parse_args()
    folders = args.data or [SHARED / "gopro", SHARED / "gopro_more"]
    pairs = held_out_pairs(folders, args.names.split(","))
    model = Deblurrer(args.md, device="cpu")
    frames = []
    for pair in pairs:
        blurry, sharp = read_image(pair.source), read_image(pair.gt)
        frames.append([array_to_tensor(x)[0] for x in (model(blurry), sharp, blurry)])
    print(f"{len(pairs)} frames ({', '.join(p.name for p in pairs)}), deblurred by {args.md}\n")
    print("| MR | n | scale | re-creates blur | B > L > S | median B / S | PSNR(MR(S), S) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for weights in args.mr:
        mr = load_weights(weights).reblur
        if mr is None:
            raise SystemExit(f"error: {weights} has no reblurring module")
        for scale in args.scale or [1]:
            f = summarize([mr_figures(mr, *t, scale=scale) for t in frames])
            print(f"| {weights} | {mr.config.get('n_blocks', '?')} | 1/{scale} | "
                  f"{f['mr_gain']:+.2f} dB | {100 * f['mr_ranked']:.0f} % | "
                  f"{f['mr_ratio']:.2f} | {f['mr_sharp_psnr']:.1f} dB |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
