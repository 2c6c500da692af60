"""Copies of image folders downscaled by an integer factor, for training at a smaller scale.

    python scripts/downscale_data.py --factor 4 --out runs/x4 ../shared/data/gopro ...

Each SOURCE folder becomes ``OUT/<its name>`` with the same layout (``blur/`` + ``sharp/``,
sequence folders, or plain images), every image shrunk by area averaging: blur lengths shrink
by the factor with the pixels, as they would for a camera of lower resolution. The convergence
study of docs/TRAINING.md trains at ×4, where GOPRO's blur (up to about 100 pixels at 720p)
fits inside MR's 25-pixel field and an iteration costs a fraction of a full-resolution one.
Images whose short side would fall below ``--min-side`` are left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

from reblur_deploy.io import read_image, write_image
from reblur_deploy.io.pairs import list_images


def downscale_folder(source: Path, out: Path, factor: int, min_side: int) -> tuple[int, int]:
    """Writes the shrunk copies; returns (written, left out as too small)."""
    written = skipped = 0
    for path in list_images(source).values():
        image = read_image(path)
        height, width = image.shape[:2]
        size = (width // factor, height // factor)
        if min(size) < min_side:
            skipped += 1
            continue
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        write_image(target.with_suffix(".png"), small, overwrite=True)
        written += 1
    return written, skipped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", type=Path, nargs="+", help="image folders")
    parser.add_argument("--factor", type=int, default=4, help="shrink by this [default: 4]")
    parser.add_argument("--out", type=Path, required=True, help="folder of the copies")
    parser.add_argument("--min-side", type=int, default=64, help="smallest short side kept")
    args = parser.parse_args()
    for source in args.sources:
        written, skipped = downscale_folder(source, args.out / source.name, args.factor,
                                            args.min_side)  # fmt: skip
        print(f"{source} -> {args.out / source.name}: {written} images, {skipped} too small")
    return 0


if __name__ == "__main__":
    sys.exit(main())
