"""``python -m train.make_dataset``: blurry/sharp pairs from high-frame-rate video, GOPRO's recipe.

GOPRO (Nah et al., CVPR 2017) averaged 7 to 13 consecutive frames of 240 fps video in linear
light to make a blurry frame, and kept the middle frame as its sharp ground truth. This does the
same for any video (or folder of frames):

    blurry = (mean over N consecutive frames of frame^2.2)^(1/2.2)   (rounded to the frames' bits)
    sharp  = frame N // 2 of the window (N odd, so it is the middle one)

Windows start every ``--stride`` frames (default N: no frame is used twice). Pairs are written in
the paired layout ``OUT/blur/<name>.png`` + ``OUT/sharp/<name>.png`` with equal names
(``<video stem>_<window index>.png``), which ``--data paired:OUT`` and ``reblur-eval --data
paired:OUT`` read. Use a video of a high frame rate (120–240 fps) and a steady exposure:
averaging frames of a 30 fps video makes blur that is larger and more stroboscopic than real
camera blur.

    python -m train.make_dataset --video clip.mp4 --average 7 --out data/clip_pairs
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from reblur_deploy.errors import ConfigError, InputError, ReblurError
from reblur_deploy.io import read_frames, read_image, write_image
from reblur_deploy.io.pairs import list_images

from .synthetic import average_linear


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    for frame in read_frames(path):
        yield frame.rgb


def _folder_frames(folder: Path) -> Iterator[np.ndarray]:
    images = list_images(folder)
    if not images:
        raise InputError(f"no images under {folder}")
    shape = None
    for path in images.values():
        image = read_image(path)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = image[..., :3]
        if shape is None:
            shape = image.shape
        elif image.shape != shape:
            raise InputError(
                f"{path} is {image.shape[1]}×{image.shape[0]}, unlike the frames before"
            )
        yield image


def make_pairs(
    frames: Iterator[np.ndarray],
    average: int,
    stride: int | None = None,
    max_pairs: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(blurry, sharp) arrays from ``average`` consecutive frames, windows ``stride`` apart."""
    if average < 1 or average % 2 == 0:
        raise ConfigError(
            f"--average must be an odd number of frames (7, 9, 11, ...), got {average}"
        )
    stride = stride or average
    if stride < 1:
        raise ConfigError("--stride must be ≥ 1")
    window: deque[np.ndarray] = deque(maxlen=average)
    made, skip = 0, 0
    for frame in frames:
        if skip:
            skip -= 1
            continue
        window.append(frame)
        if len(window) < average:
            continue
        scale = 65535.0 if frame.dtype == np.uint16 else 255.0
        blurry = average_linear(f.astype(np.float32) / scale for f in window)
        yield np.rint(blurry * scale).astype(frame.dtype), window[average // 2].copy()
        made += 1
        if max_pairs is not None and made >= max_pairs:
            return
        for _ in range(min(stride, average)):
            window.popleft()
        skip = max(0, stride - average)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.make_dataset",
        description="Make GOPRO-style blurry/sharp pairs from high-frame-rate video: the mean of "
        "N consecutive frames in linear light (gamma 2.2) is the blurry image, the middle frame "
        "the sharp one. Writes OUT/blur and OUT/sharp (read them with --data paired:OUT).",
    )
    parser.add_argument("--video", action="append", default=[], help="A video file (repeatable).")
    parser.add_argument(
        "--frames",
        action="append",
        default=[],
        help="A folder of frames in name order (repeatable).",
    )
    parser.add_argument("--average", type=int, default=7, help="Frames per blurry image, odd [7].")
    parser.add_argument(
        "--stride", type=int, default=None, help="Frames between window starts [--average]."
    )
    parser.add_argument(
        "--max-pairs", type=int, default=None, help="Stop after this many per input."
    )
    parser.add_argument("--out", required=True, help="Output folder (gets blur/ and sharp/).")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing pairs.")
    parser.add_argument("-q", "--quiet", action="store_true", help="No progress bar.")
    return parser


def run(args: argparse.Namespace) -> int:
    inputs = [(Path(v), "video") for v in args.video] + [(Path(f), "frames") for f in args.frames]
    if not inputs:
        raise ConfigError("give at least one --video FILE or --frames DIR")
    out = Path(args.out)
    for sub in ("blur", "sharp"):
        if (out / sub).is_dir() and any((out / sub).iterdir()) and not args.overwrite:
            raise ConfigError(f"{out / sub} is not empty (pass --overwrite to add to it)")
    total = 0
    for path, kind in inputs:
        frames = _video_frames(path) if kind == "video" else _folder_frames(path)
        pairs = make_pairs(frames, args.average, args.stride, args.max_pairs)
        bar = tqdm(desc=path.name, unit="pair", disable=True if args.quiet else None)
        made = 0
        for index, (blurry, sharp) in enumerate(pairs):
            name = f"{path.stem}_{index:06d}.png"
            write_image(out / "blur" / name, blurry, overwrite=args.overwrite)
            write_image(out / "sharp" / name, sharp, overwrite=args.overwrite)
            bar.update()
            made += 1
        bar.close()
        total += made
        if made == 0:
            raise InputError(f"{path} has fewer than {args.average} frames: no pair made")
    print(f"wrote {total} pair(s) to {out}/blur and {out}/sharp")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ReblurError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
