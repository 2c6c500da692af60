"""Throughput of the C++ program (examples/cpp) and of the GStreamer element (reblurdeblur)
against reblur-run on the same 1280×720 frames, measured in one run: each deblurs the same
folder of real GOPRO frames (PNG in, PNG out) with `unet-lite` on the CPU (eager, one frame at
a time) and is timed end to end (start-up, decoding, the network, encoding); the C++ program
also reports the time of its frame function alone.

    make cpp && python scripts/embedded_throughput.py [--data ../shared/data] [--frames 20]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(command: list) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--program", default=str(REPO / "build" / "cpp" / "reblur_deblur"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = tmp / "frames"
        frames.mkdir()
        for path in sorted((Path(args.data) / "gopro_clip_noGT").glob("*.png"))[: args.frames]:
            shutil.copy(path, frames / path.name)
        n = len(list(frames.iterdir()))
        model = tmp / "unet-lite.ts"
        subprocess.run([BIN / "reblur-export", "--to", "torchscript", "--weights", "unet-lite",
                        "-o", model], check=True, capture_output=True)  # fmt: skip
        cpp_s, cpp_log = timed([args.program, model, frames, tmp / "cpp"])
        frame_fn = float(re.search(r"([0-9.]+) frames/s", cpp_log).group(1))
        run_s, _ = timed([BIN / "reblur-run", frames, "-o", tmp / "py/", "--backend", "torch",
                          "--batch-size", "1", "-q"])  # fmt: skip
        first = int(min(p.stem for p in frames.iterdir()))
        (tmp / "gst").mkdir()
        # pngenc at compression 1, as fast as the PNG writers of the other two
        pipeline = (
            f"multifilesrc location={frames}/%06d.png start-index={first} "
            "caps=image/png,framerate=30/1 ! pngdec ! videoconvert ! video/x-raw,format=RGB ! "
            "reblurdeblur weights=unet-lite ! videoconvert ! pngenc compression-level=1 ! "
            f"multifilesink location={tmp}/gst/%06d.png"
        )
        gst_s, _ = timed([BIN / "reblur-gst-launch", "-q", *pipeline.split()])
        assert len(list((tmp / "gst").iterdir())) == n
    print(f"{n} frames of 1280×720, unet-lite, eager, one frame at a time")
    print("| program | end to end, frames/s | × reblur-run |")
    print("|---|---:|---:|")
    print(f"| reblur-run (Python) | {n / run_s:.2f} | 1.00 |")
    print(f"| reblur_deblur (C++, TorchScript) | {n / cpp_s:.2f} | {run_s / cpp_s:.2f} |")
    print(f"| reblurdeblur (GStreamer element) | {n / gst_s:.2f} | {run_s / gst_s:.2f} |")
    print(f"| reblur_deblur, frame function only | {frame_fn:.2f} | |")


if __name__ == "__main__":
    main()
