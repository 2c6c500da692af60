"""Deblur a live camera (or any video OpenCV can open) frame by frame.

    python examples/camera_loop.py --source 0 --show               # webcam 0 (needs a GUI OpenCV)
    python examples/camera_loop.py --source clip.mp4 --out out.avi  # a file, written with OpenCV
    python examples/camera_loop.py --source 0 --tta-carry 1         # adapt as the video goes

OpenCV frames are BGR, which ``Deblurrer(color="bgr")`` takes directly. ``stream`` keeps the
models resident and runs each frame as soon as it arrives (``latency=0``); raise ``latency`` to
batch frames for throughput when a little delay is fine.
"""

from __future__ import annotations

import argparse
import collections
import time

import cv2

from reblur_deploy import Deblurrer, TTAConfig


def frames(capture: cv2.VideoCapture, limit: int | None):
    count = 0
    while limit is None or count < limit:
        ok, frame = capture.read()
        if not ok:
            return
        count += 1
        yield frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="0", help="camera index or video file")
    parser.add_argument("--weights", default=None, help="weight file or bundled model name")
    parser.add_argument("--out", default=None, help="write the result to this video file")
    parser.add_argument("--show", action="store_true", help="show input | output in a window")
    parser.add_argument("--tta-carry", type=int, default=None, help="TTA steps per frame")
    parser.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    args = parser.parse_args()

    source = int(args.source) if args.source.isdigit() else args.source
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise SystemExit(f"cannot open {args.source}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    tta = None if args.tta_carry is None else TTAConfig(steps=5, carry=args.tta_carry)
    deblurrer = Deblurrer(args.weights, color="bgr", batch_size=1, tta=tta)
    pending: collections.deque = collections.deque()  # inputs whose outputs are not out yet

    def remember(source_frames):
        for frame in source_frames:
            pending.append(frame)
            yield frame

    writer, start, count = None, time.perf_counter(), 0
    for sharp in deblurrer.stream(remember(frames(capture, args.frames)), latency=0):
        frame = pending.popleft()
        count += 1
        if args.out:
            if writer is None:
                h, w = sharp.shape[:2]
                writer = cv2.VideoWriter(args.out, cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
            writer.write(sharp)
        if args.show:
            cv2.imshow("input | deblurred (q quits)", cv2.hconcat([frame, sharp]))
            if cv2.waitKey(1) & 0xFF == ord("q"):
                break
    capture.release()
    if writer is not None:
        writer.release()
    seconds = time.perf_counter() - start
    print(f"{count} frame(s) in {seconds:.1f} s ({count / max(seconds, 1e-9):.2f} fps)")


if __name__ == "__main__":
    main()
