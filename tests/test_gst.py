"""The GStreamer element reblurdeblur in real gst-launch-1.0 pipelines (reblur-gst-launch) on
real frames: frames, time stamps and formats kept, output equal to Deblurrer within 1/255,
bad properties and caps reported as GStreamer errors."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from reblur_deploy import Deblurrer
from reblur_deploy.gst import plugin_env
from reblur_deploy.io import probe_video, read_frames, read_image

BIN = Path(sys.executable).parent
W, H, N = 320, 180, 6
# CI installs GStreamer (make system-deps) and sets this: there a missing one fails.
REQUIRED = os.environ.get("REBLUR_REQUIRE_GST") == "1"


def gstreamer_missing() -> str | None:
    if not shutil.which("gst-inspect-1.0"):
        return "GStreamer is not installed (sudo make system-deps)"
    found = subprocess.run(["gst-inspect-1.0", "python"], capture_output=True, env=plugin_env())
    if found.returncode:
        return "GStreamer's Python plugin loader is not installed (sudo make system-deps)"
    return None


@pytest.fixture(scope="module")
def clip(tmp_path_factory, data_dir):
    why = gstreamer_missing()
    if why and not REQUIRED:
        pytest.skip(why)
    import cv2

    path = tmp_path_factory.mktemp("gst") / "clip.mp4"
    frames = sorted((data_dir / "gopro_clip_noGT").glob("*.png"))[:N]  # real 720p frames,
    with av.open(str(path), "w") as out:  # made into an H.264 clip at a quarter of their size
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for frame in frames:
            small = cv2.resize(read_image(frame), (W, H), interpolation=cv2.INTER_AREA)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(small, format="rgb24")))
        out.mux(stream.encode())
    return path


def launch(pipeline: str, cwd: Path, flag: str = "-q") -> subprocess.CompletedProcess:
    command = [BIN / "reblur-gst-launch", flag, *pipeline.split()]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def raw_frames(path: Path) -> np.ndarray:
    return np.fromfile(path, np.uint8).reshape(-1, H, W, 3)


DECODE = "filesrc location=clip.mp4 ! decodebin ! videoconvert ! video/x-raw,format={fmt}"


@pytest.mark.slow
def test_frames_equal_deblurrer_in_rgb_and_bgr(clip):
    """The decoded frames through the element equal Deblurrer on the same decoded frames."""
    cwd = clip.parent
    for name, middle in (("in", ""), ("out", "! reblurdeblur weights=unet-lite ")):
        done = launch(f"{DECODE.format(fmt='RGB')} {middle}! filesink location={name}.rgb", cwd)
        assert done.returncode == 0, done.stdout + done.stderr
    done = launch(f"{DECODE.format(fmt='BGR')} ! reblurdeblur weights=unet-lite ! "
                  "filesink location=out.bgr", cwd)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    inputs, outputs = raw_frames(cwd / "in.rgb"), raw_frames(cwd / "out.rgb")
    assert len(inputs) == len(outputs) == N
    deblurrer = Deblurrer("unet-lite", device="cpu")
    for frame, out in zip(inputs, outputs, strict=True):
        expected = deblurrer(frame).astype(np.int16)
        assert np.abs(out.astype(np.int16) - expected).max() <= 1
    bgr = raw_frames(cwd / "out.bgr")[..., ::-1]
    assert np.abs(bgr.astype(np.int16) - outputs.astype(np.int16)).max() <= 1


def buffer_times(output: str) -> list[str]:
    """The pts, duration and flags of every buffer ``identity silent=false`` saw (with -v)."""
    pattern = r"pts: ([0-9:.]+), duration: ([0-9:.]+), offset: [^,]*, offset_end: [^,]*, "
    return re.findall(pattern + r"flags: (\w+)", output)


@pytest.mark.slow
def test_time_stamps_durations_and_frames_pass_through(clip, tmp_path):
    """Each buffer leaves the element with the time stamp and duration it came with, and an
    encoded pipeline keeps the frame count, rate and frame times of the same pipeline without
    the element (with TTA in the video mode)."""
    shutil.copy(clip, tmp_path / "clip.mp4")
    probe = "identity silent=false ! fakesink"
    seen = {}
    for name, middle in (("plain", ""), ("element", "reblurdeblur weights=unet-lite ! ")):
        done = launch(f"{DECODE.format(fmt='RGB')} ! {middle}{probe}", tmp_path, "-v")
        assert done.returncode == 0, done.stdout + done.stderr
        seen[name] = buffer_times(done.stdout)
    assert len(seen["plain"]) == N and seen["element"] == seen["plain"]
    encode = "videoconvert ! x264enc ! mp4mux ! filesink location"
    for name, middle in (("plain", ""), ("out", "reblurdeblur weights=unet-lite tta-steps=2 ! ")):
        done = launch(f"{DECODE.format(fmt='RGB')} ! {middle}{encode}={name}.mp4", tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    plain, result = probe_video(tmp_path / "plain.mp4"), probe_video(tmp_path / "out.mp4")
    assert (result.frames, result.fps, result.width, result.height) == (N, plain.fps, W, H)
    times = [f.time for f in read_frames(tmp_path / "out.mp4")]
    assert times == [f.time for f in read_frames(tmp_path / "plain.mp4")]


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        ("reblurdeblur weights=nope", "reblurdeblur: no weight file 'nope'"),
        ("reblurdeblur weights=unet-lite backend=tensorrt", "reblurdeblur: "),
        ("video/x-raw,format=I420 ! reblurdeblur weights=unet-lite", "could not link"),
    ],
    ids=["bad weights", "backend without an engine", "unsupported format"],
)
def test_errors_are_gstreamer_errors_without_tracebacks(clip, element, expected):
    pipeline = f"filesrc location=clip.mp4 ! decodebin ! videoconvert ! {element} ! fakesink"
    if "I420" in element:  # a fixed format at a static pad: refused when the pipeline is built
        pipeline = f"videotestsrc num-buffers=2 ! {element} ! fakesink"
    done = launch(pipeline, clip.parent)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and expected in output, output
    assert "Traceback" not in output and "CRITICAL" not in output


def test_the_old_tta_property_still_sets_the_steps_with_a_warning(clip):
    """tta=N, the old name of tta-steps, works for one release and says it is deprecated."""
    element = "reblurdeblur weights=unet-lite tta=1"
    pipeline = f"filesrc location=clip.mp4 ! decodebin ! videoconvert ! {element} ! fakesink"
    done = launch(pipeline, clip.parent, "-e")  # not -q, which hides warnings
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "tta is deprecated; use tta-steps" in output, output


def test_the_element_says_which_engine_runs(clip):
    """The engine auto picked (or TTA's eager) is posted as an INFO message."""
    for extra, engine in (("", r"(onnxruntime|eager) on cpu"), ("tta-steps=1", "eager on cpu")):
        element = f"reblurdeblur weights=unet-lite {extra}"
        pipeline = f"filesrc location=clip.mp4 ! decodebin ! videoconvert ! {element} ! fakesink"
        done = launch(pipeline, clip.parent, "-e")
        output = done.stdout + done.stderr
        assert done.returncode == 0 and re.search(f"reblurdeblur: engine {engine}", output), output
