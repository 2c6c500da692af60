"""reblur-run on a Ray cluster against a local run: folders of real frames (GOPRO, scaled to
640×360), timed end to end, locally and with --ray on a local cluster (``ray start --head``,
started once, as a real cluster would be) with 1 and 2 workers, at two folder sizes, so that
each path's fixed cost (start-up, connecting, the actors' model loads) and its cost per image
come apart (a straight line through the two). Prints a Markdown table.

    python scripts/ray_throughput.py [--data ../shared/data] [--images 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "token"}  # the token `ray start` made


def timed(*args) -> float:
    start = time.perf_counter()
    subprocess.run([str(a) for a in args], check=True, capture_output=True, env=ENV)
    return time.perf_counter() - start


def main() -> None:
    import cv2

    sys.path.insert(0, str(REPO))
    from reblur_deploy.io import read_image, write_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    frames = sorted((args.data / "gopro_clip_noGT").glob("*.png"))
    sizes = (args.images, 4 * args.images)
    runs = [("local reblur-run", ()), ("--ray, 1 worker", ("--ray-workers", 1)),
            ("--ray, 2 workers", ("--ray-workers", 2))]  # fmt: skip
    seconds: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([BIN / "ray", "start", "--head", "--port=6399", "--num-cpus=2",
                        "--include-dashboard=false", "--disable-usage-stats"],
                       check=True, capture_output=True)  # fmt: skip
        try:
            for n in sizes:
                folder = Path(tmp) / f"in{n}"
                folder.mkdir()
                for i in range(n):
                    image = read_image(frames[i % len(frames)])
                    write_image(folder / f"{i:03d}.png", cv2.resize(image, (640, 360)))
                for name, extra in runs:
                    ray = ("--ray", "127.0.0.1:6399", *extra) if extra else ()
                    out = f"{tmp}/out-{n}-{len(seconds)}/"
                    seconds[name, n] = timed(BIN / "reblur-run", folder, "-o", out, *ray)
        finally:
            subprocess.run([BIN / "ray", "stop", "--force"], capture_output=True)
    print(f"640×360 PNG frames, unet-lite, {sizes[0]} and {sizes[1]} images\n")
    print("| run | s, fixed | s per image | images/s at 1,000 images |\n|---|---|---|---|")
    for name, _ in runs:
        small, large = seconds[name, sizes[0]], seconds[name, sizes[1]]
        per_image = (large - small) / (sizes[1] - sizes[0])
        fixed = small - per_image * sizes[0]
        print(
            f"| {name} | {fixed:.1f} | {per_image:.3f} | {1000 / (fixed + 1000 * per_image):.2f} |"
        )


if __name__ == "__main__":
    main()
