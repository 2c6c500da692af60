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

from .conftest import REPO

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


def messages(output: str, name: str) -> list[dict[str, str]]:
    """The fields of every element message ``name`` that gst-launch-1.0 -m printed."""
    found = []
    for line in output.splitlines():
        if f": {name}, " in line:
            fields = line.split(f": {name}, ", 1)[1].rstrip(";")
            found.append(dict(re.findall(r"([\w-]+)=\(\w+\)([^,]+)", fields)))
    return found


LIVE = ("videotestsrc is-live=true num-buffers={n} ! video/x-raw,width=320,height=180,"
        "framerate={rate}/1 ! videoconvert ! reblurdeblur weights=unet-lite {props} ! "
        "fakesink sync=true qos=true")  # fmt: skip


@pytest.mark.slow
def test_a_live_source_faster_than_the_element_drops_late_frames(clip):
    """A live 120 fps source (8 ms a frame, far less than a frame's inference here): QoS drops
    the frames that are late before they are deblurred (in the element, or already in the
    video filter before it: QoS events travel upstream), each with a QoS message, so the
    pipeline keeps up with the source; the element says how many it deblurred."""
    done = launch(LIVE.format(n=60, rate=120, props=""), clip.parent, "-m")
    output = done.stdout + done.stderr
    counts = re.search(r"reblurdeblur: (\d+) frame\(s\) deblurred, (\d+) dropped as late", output)
    assert done.returncode == 0 and counts, output
    deblurred, dropped = map(int, counts.groups())
    late = len(re.findall(r"Got message #\d+ from element \S+ \(qos\)", output))
    assert deblurred + late == 60 and late >= dropped and late > 0 and deblurred > 0


LATENCY = """
import sys, time
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
pipeline = Gst.parse_launch(sys.argv[1])
bus = pipeline.get_bus()
pipeline.set_state(Gst.State.PLAYING)
seconds = [0.0]  # what the element's stats messages say each frame took
deadline = time.monotonic() + 2.0
while time.monotonic() < deadline:
    kinds = Gst.MessageType.ELEMENT | Gst.MessageType.ERROR
    message = bus.timed_pop_filtered(50 * Gst.MSECOND, kinds)
    if message is not None and message.type == Gst.MessageType.ERROR:
        sys.exit(str(message.parse_error()[0]))
    if message is not None and message.get_structure().get_name() == "reblurdeblur-frame":
        seconds.append(message.get_structure().get_value("seconds"))
query = Gst.Query.new_latency()
assert pipeline.query(query)
live, low, high = query.parse_latency()
pipeline.set_state(Gst.State.NULL)
print(live, low, max(seconds))
"""


@pytest.mark.slow
def test_the_element_adds_its_processing_time_to_the_pipeline_latency(clip):  # clip: GStreamer
    """In a live pipeline the LATENCY query's minimum grows by at least the longest time the
    element took for a frame so far (its stats messages, in the same run): the element
    reports its processing time and raises it when a frame takes longer."""
    source = "videotestsrc is-live=true ! video/x-raw,width=320,height=180,framerate=10/1"
    answers = {}
    for name, middle in (("without", "identity"),
                         ("with", "reblurdeblur weights=unet-lite stats=true")):  # fmt: skip
        pipeline = f"{source} ! videoconvert ! {middle} ! fakesink sync=true"
        # Debian's Python, which has GStreamer's bindings (python3-gst-1.0), as the loader's
        done = subprocess.run(["/usr/bin/python3", "-c", LATENCY, pipeline], env=plugin_env(),
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        live, low, slowest = done.stdout.split()
        answers[name] = (live, int(low), float(slowest))
    assert answers["with"][0] == answers["without"][0] == "True"
    added = (answers["with"][1] - answers["without"][1]) / 1e9
    assert added >= answers["with"][2] > 0, answers


@pytest.mark.slow
def test_an_interval_and_per_frame_stats_as_element_messages(clip):
    """tta-interval=3 in the video mode: the first frame takes its steps, then every third
    frame one; each frame's message says so, with its time stamp, seconds and blur score."""
    element = ("reblurdeblur weights=unet-lite tta-steps=2 tta-interval=3 stats=true "
               "stats-blur-score=true")  # fmt: skip
    done = launch(f"{DECODE.format(fmt='RGB')} ! {element} ! fakesink", clip.parent, "-m")
    frames = messages(done.stdout, "reblurdeblur-frame")
    assert done.returncode == 0 and len(frames) == N, done.stdout[-2000:] + done.stderr
    assert [int(f["tta-steps"]) for f in frames] == [2, 0, 0, 1, 0, 0]
    assert all(float(f["seconds"]) > 0 and float(f["blur-score"]) > 0 for f in frames)
    times = [float(f["time"]) for f in frames]
    assert times == sorted(times) and len(set(times)) == N


@pytest.mark.slow
def test_two_streams_share_one_network_and_stay_independent(clip):
    """Two decoded streams (RGB and BGR) through two elements of the same model in one
    pipeline: one network, and each output equals Deblurrer on its own frames."""
    cwd = clip.parent
    rgb = f"{DECODE.format(fmt='RGB')} ! reblurdeblur weights=unet-lite ! filesink location=a.rgb"
    bgr = (f"{DECODE.format(fmt='BGR')} ! reblurdeblur weights=unet-lite ! "
           "filesink location=b.bgr")  # fmt: skip
    done = launch(f"{rgb} {bgr}", cwd, "-e")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    engines = re.findall(r"reblurdeblur: engine [^\n]*", output)
    assert len(engines) == 2 and sum(e.endswith("(shared)") for e in engines) == 1, engines
    decoded = launch(f"{DECODE.format(fmt='RGB')} ! filesink location=in.rgb", cwd)
    assert decoded.returncode == 0, decoded.stderr
    frames = raw_frames(cwd / "in.rgb")  # GStreamer's decoding, as the elements got it
    deblurrer = Deblurrer("unet-lite", device="cpu")
    for name, order in (("a.rgb", slice(None)), ("b.bgr", slice(None, None, -1))):
        outputs = raw_frames(cwd / name)[..., order]
        assert len(outputs) == N
        for frame, out in zip(frames, outputs, strict=True):
            assert np.abs(out.astype(np.int16) - deblurrer(frame).astype(np.int16)).max() <= 1


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        ("reblurdeblur weights=nope", "reblurdeblur: no weight file 'nope'"),
        ("reblurdeblur weights=unet-lite tta-steps=-3", "reblurdeblur: tta-steps must be ≥ 0"),
        ("reblurdeblur weights=unet-lite tta-steps=1 tta-interval=0", "tta-interval must be ≥ 1"),
        ("reblurdeblur weights=unet-lite backend=fastest", "unknown backend 'fastest'"),
        ("reblurdeblur weights=unet-lite backend=md.engine", "no exported file 'md.engine'"),
        ("reblurdeblur weights=unet-lite device=gpu", "invalid device 'gpu'"),
        ("reblurdeblur weights=unet-lite tta-steps=1 tta-lr=nan", "tta-lr must be ≥ 0"),
    ],
    ids=[
        "bad weights",
        "negative steps",
        "zero interval",
        "unknown backend",
        "missing engine",
        "bad device",
        "nan learning rate",
    ],
)
def test_a_refused_element_leaves_no_output_file(clip, tmp_path, element, expected):
    """Checked when the pipeline starts, before the sink opens its file."""
    shutil.copy(clip, tmp_path / "clip.mp4")
    encode = "videoconvert ! x264enc ! mp4mux ! filesink location=out.mp4"
    done = launch(f"{DECODE.format(fmt='RGB')} ! {element} ! {encode}", tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and expected in output, output
    assert "Traceback" not in output and len(re.findall("ERROR", output)) <= 2
    assert not (tmp_path / "out.mp4").exists()


def readme_pipeline(first: str) -> str:
    """The README's reblur-gst-launch command that starts with ``first``, as one line."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"reblur-gst-launch {first}")
    lines = []
    for line in text[start:].splitlines():
        lines.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            break
    return " ".join(lines).removeprefix("reblur-gst-launch ")


@pytest.mark.slow
def test_the_readme_file_pipeline_keeps_the_audio_and_writes_yuv420p(tmp_path):
    """README's file-in, file-out pipeline as it is written, on a clip with AAC audio: H.264
    in yuv420p with every frame, the audio stream copied, progress lines on the way."""
    if gstreamer_missing() and not REQUIRED:
        pytest.skip(gstreamer_missing())
    from .test_video import audio_packets, make_video

    make_video(tmp_path / "in.mp4", n=12)
    done = launch(readme_pipeline("filesrc location=in.mp4"), tmp_path, "-e")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "progressreport0" in done.stdout
    with av.open(str(tmp_path / "out.mp4")) as out:
        video = out.streams.video[0]
        assert (video.codec_context.name, video.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert out.streams.audio[0].codec_context.name == "aac"
    assert probe_video(tmp_path / "out.mp4").frames == 12
    (_, kept), (_, given) = (audio_packets(tmp_path / name) for name in ("out.mp4", "in.mp4"))
    assert len(kept) >= len(given) - 2  # mp4mux leaves out the encoder's priming packets
