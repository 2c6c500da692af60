"""`reblur-run` end to end, as a real subprocess, on real images and real encoded video."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from reblur_deploy import save_weights
from reblur_deploy.io import probe_video, read_frames, read_image, write_image
from reblur_deploy.models import build

from .conftest import randomized
from .test_video import audio_packets, make_video

RUN = str(Path(sys.executable).parent / "reblur-run")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    md = randomized(build("unet", widths=(8, 12, 16), n_blocks=1))
    mr = randomized(build("reblur", n_blocks=1, width=8), seed=1)
    return str(
        save_weights(
            tmp_path_factory.mktemp("w") / "small.safetensors", {"deblur": md, "reblur": mr}
        )
    )


@pytest.fixture(scope="module")
def crop(data_dir):
    return read_image(data_dir / "gopro" / "blur" / "blur_01.png")[200:296, 300:428]  # 96×128


def run(*args, check=True):
    result = subprocess.run([RUN, *map(str, args)], capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(result.stderr)
    return result


def test_a_folder_of_mixed_images_keeps_each_format(tmp_path, weights, crop):
    src = tmp_path / "shots"
    images = {
        "rgb.png": crop,
        "deep.png": crop.astype(np.uint16) * 257,
        "alpha.png": np.dstack([crop, np.full(crop.shape[:2], 200, np.uint8)]),
        "gray.png": crop[..., 1],
        "photo.jpg": crop,
    }
    for name, image in images.items():
        write_image(src / name, image)
    result = run(src, "--weights", weights, "--report", tmp_path / "report.json")
    out = tmp_path / "shots_deblurred"
    for name, image in images.items():
        got = read_image(out / name)
        assert got.shape == image.shape and got.dtype == image.dtype, name
    assert np.array_equal(read_image(out / "alpha.png")[..., 3], images["alpha.png"][..., 3])
    assert "5 item(s), 5 frame(s)" in result.stdout
    assert result.stdout.rstrip().endswith(f"→ {out}/")  # where they went, not "beside"
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["per_frame"]) == 5 and report["failed"] == []
    assert all(e["blur_before"] is not None and e["seconds"] >= 0 for e in report["per_frame"])
    scores = [e[k] for e in report["per_frame"] for k in ("blur_before", "blur_after")]
    assert any(len(repr(v).split("e")[0]) > 8 for v in scores)  # full precision, not rounded
    assert "tta_steps" not in report["per_frame"][0]
    run(src / "rgb.png", "--weights", weights, "--tta", "2", "--tta-lr", "1e-3", "-o",
        tmp_path / "tta.png", "--report", tmp_path / "tta.json")  # fmt: skip
    (entry,) = json.loads((tmp_path / "tta.json").read_text())["per_frame"]
    assert entry["tta_steps"] == 2 and entry["tta_loss_last"] != entry["tta_loss_first"]


@pytest.mark.slow
def test_outputs_and_inputs_are_never_overwritten(tmp_path, weights, crop):
    image = write_image(tmp_path / "a.png", crop)
    run(image, "--weights", weights)
    target = tmp_path / "a_deblurred.png"
    before = target.read_bytes()
    refused = run(image, "--weights", weights, check=False)
    assert refused.returncode == 1 and "exists" in refused.stderr
    assert target.read_bytes() == before
    for args in (["-o", image], ["-o", image, "--overwrite"]):
        result = run(image, "--weights", weights, *args, check=False)
        assert result.returncode == 1 and "refusing to overwrite an input" in result.stderr
    assert np.array_equal(read_image(image), crop)
    run(image, "--weights", weights, "--overwrite", "--side-by-side")
    assert read_image(target).shape == (96, 256, 3)


def test_one_bad_file_is_reported_and_the_others_done(tmp_path, weights, crop):
    for name in ("a.png", "c.png"):
        write_image(tmp_path / "in" / name, crop)
    (tmp_path / "in" / "b.png").write_bytes(b"not a png")
    result = run(tmp_path / "in", "-o", tmp_path / "out", "--weights", weights, "-q", check=False)
    assert result.returncode == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "b.png" in errors[0] and "Traceback" not in result.stderr


def test_several_inputs_and_one_file_name_as_output_are_refused(tmp_path, weights, crop):
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "in" / name, crop)
    files = [tmp_path / "in" / "a.png", tmp_path / "in" / "b.png"]
    # (a folder with -o NAME.mp4 is legitimate: its frames become one video)
    for inputs, outputs in ((files, ("single.png", "single.mp4")), ([tmp_path / "in"], ["x.png"])):
        for output in outputs:
            result = run(*inputs, "-o", tmp_path / output, "--weights", weights, check=False)
            assert result.returncode == 1 and "names one file, but there are 2 outputs" in (
                result.stderr
            )
            assert not (tmp_path / output).exists()  # no folder named like a file


@pytest.mark.slow
def test_run_says_which_engine_runs(tmp_path, weights, crop):
    """In its closing line: auto's pick without TTA (measured on this machine), eager with."""
    image = write_image(tmp_path / "a.png", crop)
    for extra, engines in (((), ("onnxruntime", "eager")), (("--tta", "1"), ("eager",))):
        result = run(image, "--weights", weights, "--device", "cpu", "--overwrite", *extra)
        said = re.search(r"fps, (\w+) on cpu \(fp32", result.stdout)
        assert said and said.group(1) in engines, result.stdout


def test_glob_and_shards(tmp_path, weights, crop):
    for i in range(4):
        write_image(tmp_path / f"f{i}.png", crop)
    shard = run(str(tmp_path / "f*.png"), "--weights", weights, "--shard", "1/2")
    assert shard.stdout.rstrip().endswith("→ beside the inputs")
    assert sorted(p.name for p in tmp_path.glob("*_deblurred.png")) == [
        "f1_deblurred.png",
        "f3_deblurred.png",
    ]


def test_bad_options_and_weights_are_one_line_errors(tmp_path, crop):
    image = write_image(tmp_path / "a.png", crop)
    for args, message in [
        ([image, "--weights", tmp_path / "none.safetensors"], "no weight file"),
        ([tmp_path / "missing.png"], "no such file"),
        ([image, "--shard", "3/2"], "--shard"),
    ]:
        result = run(*args, check=False)
        assert result.returncode != 0 and message in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4")  # 30 frames, AAC audio


def test_video_keeps_frames_time_stamps_and_audio_with_tta(tmp_path, weights, clip):
    out = tmp_path / "out.mp4"
    result = run(clip, "--weights", weights, "--tta", "2", "-o", out)
    src, dst = probe_video(clip), probe_video(out)
    assert (dst.frames, dst.fps, dst.width, dst.height) == (30, src.fps, src.width, src.height)
    assert audio_packets(out) == audio_packets(clip)
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        times_a = [f.time for f in a.decode(video=0)]
        times_b = [f.time for f in b.decode(video=0)]
    assert times_a == pytest.approx(times_b, abs=1e-6)
    assert "1 item(s), 30 frame(s)" in result.stdout


@pytest.mark.slow
def test_videos_adapt_in_the_video_mode_unless_told_per_frame(tmp_path, weights, clip):
    """--tta N on a video: N steps on the first frame, then one step a frame on crops (carried
    over); --tta-per-frame gives every frame N whole-frame steps; images stay per frame."""

    def steps(*args):
        report = tmp_path / "r.json"
        result = run(clip, "--weights", weights, "--tta", "3", "--end", "4", "--report", report,
                     "-o", tmp_path / "o.mp4", "--overwrite", *args)  # fmt: skip
        return [f["tta_steps"] for f in json.loads(report.read_text())["per_frame"]], result

    counts, result = steps()
    assert counts == [3, 1, 1, 1]
    assert "TTA of videos: the video mode" in result.stderr
    counts, result = steps("--tta-per-frame")
    assert counts == [3, 3, 3, 3] and "video mode" not in result.stderr
    assert steps("--tta-carry", "2")[0] == [3, 2, 2, 2]  # carry as asked, no crops added
    result = run(clip, "--weights", weights, "--tta-video", "-o", tmp_path / "x.mp4", check=False)
    assert result.returncode == 1 and result.stderr == "error: --tta-video needs --tta N\n"


def test_long_videos_on_a_cpu_run_compiled_by_default(tmp_path, clip, crop):
    """The default engine: compiled for videos of at least COMPILE_PIXELS pixels in all, without
    TTA, on a CPU (compiling once pays for itself there), auto otherwise (ONNX Runtime on a
    cached graph without TTA, eager torch with it)."""
    from reblur_deploy.runner import COMPILE_PIXELS, RunOptions, default_backend, plan_jobs

    write_image(tmp_path / "a.png", crop)
    cpu, videos = torch.device("cpu"), plan_jobs([str(clip)], RunOptions(output=str(tmp_path)))
    images = plan_jobs([str(tmp_path / "a.png")], RunOptions(output=str(tmp_path / "o")))
    info = probe_video(clip)
    enough = -(-COMPILE_PIXELS // (info.width * info.height))  # frames of this clip's size
    assert default_backend(cpu, False, videos, [enough]) == "compile"
    assert default_backend(cpu, False, videos, [enough - 1]) == "auto"
    assert default_backend(cpu, False, videos, [None]) == "auto"  # length unknown
    assert default_backend(cpu, True, videos, [enough]) == "auto"  # TTA: eager
    assert default_backend(cpu, False, videos + images, [enough, 1]) == "auto"


def test_video_frame_range(tmp_path, weights, clip):
    out = tmp_path / "range.mp4"
    run(clip, "--weights", weights, "--start", "10", "--end", "20", "-o", out, "-q")
    assert probe_video(out).frames == 10


def test_a_folder_of_frames_becomes_a_video(tmp_path, weights, data_dir):
    frames = sorted((data_dir / "gopro_clip_noGT").glob("*.png"))[:6]
    for path in frames:
        write_image(tmp_path / "frames" / path.name, read_image(path)[:96, :128])
    run(tmp_path / "frames", "--fps", "25", "-o", tmp_path / "clip.mp4", "--weights", weights)
    info = probe_video(tmp_path / "clip.mp4")
    assert (info.frames, info.fps, info.width, info.height) == (6, 25, 128, 96)


def test_a_corrupt_video_is_a_one_line_error(tmp_path, weights):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    result = run(bad, "--weights", weights, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "bad.mp4" in result.stderr
    assert not (tmp_path / "bad_deblurred.mp4").exists()


def test_a_truncated_video_is_refused_unless_allowed(tmp_path, weights):
    """A cut MKV wrote 9 of its 20 frames with exit 0 and no word (issue 29, bug 6): now one
    line and exit 1 with nothing written, or with --allow-truncated the frames before the cut
    and a warning saying how many."""
    whole = make_video(tmp_path / "whole.mkv", n=20, seconds=20 / 30).read_bytes()
    cut, out = tmp_path / "cut.mkv", tmp_path / "out.mkv"
    cut.write_bytes(whole[: len(whole) // 2])
    result = run(cut, "--weights", weights, "-o", out, "-q", check=False)
    assert result.returncode == 1 and not out.exists()
    assert result.stderr.startswith("error: cannot decode") and "cut.mkv" in result.stderr
    assert "truncated" in result.stderr and "--allow-truncated" in result.stderr
    assert result.stderr.count("\n") == 1
    result = run(cut, "--weights", weights, "-o", out, "-q", "--allow-truncated")
    kept = len(list(read_frames(out)))
    assert 0 < kept < 20 and f"kept the {kept} frames before it" in result.stderr


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "kill", "hangup"]
)
def test_an_interrupted_run_leaves_nothing_under_the_final_name(tmp_path, weights, sig):
    long_clip = make_video(tmp_path / "long.mp4", n=300, audio=False)
    out = tmp_path / "out"
    out.mkdir()
    args = [
        long_clip,
        "--weights",
        weights,
        "--tta",
        "20",
        "--batch-size",
        "1",
        "-o",
        out / "x.mp4",
    ]
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}  # SIGABRT prints every thread's stack
    # Started with SIGINT ignored, as a background job of a script starts: Ctrl-C must work.
    process = subprocess.Popen([RUN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, preexec_fn=_ignore_sigint)  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(out.iterdir()) and time.monotonic() < deadline:  # wait for the temporary file
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(sig)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # say where it hangs
        process.send_signal(signal.SIGABRT)
        _, stderr = process.communicate(timeout=30)
        pytest.fail(f"still running 60 s after {sig.name}; its stacks:\n{stderr[-5000:]}")
    assert process.returncode == 130, stderr
    assert "interrupted after" in stderr and "nothing was written" in stderr
    assert list(out.iterdir()) == []


def test_torchrun_spreads_a_folder_over_processes(tmp_path, weights, crop):
    for i in range(4):
        write_image(tmp_path / "in" / f"f{i}.png", crop)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--nproc-per-node", "2", "--no-python", RUN, tmp_path / "in",
           "-o", tmp_path / "out", "--weights", weights, "--device", "cpu", "-q"]  # fmt: skip
    result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"f{i}.png" for i in range(4)]


@pytest.mark.slow
def test_onnxruntime_backend_matches_torch_on_a_real_image(tmp_path, weights, crop):
    image = write_image(tmp_path / "a.png", crop)
    onnx = tmp_path / "model.onnx"
    export = str(Path(sys.executable).parent / "reblur-export")
    subprocess.run([export, "--to", "onnx", "--weights", weights, "-o", onnx], check=True,
                   capture_output=True)  # fmt: skip
    run(image, "--weights", weights, "-o", tmp_path / "torch.png")
    run(
        image,
        "--weights",
        weights,
        "--backend",
        "onnxruntime",
        "--onnx",
        onnx,
        "-o",
        tmp_path / "ort.png",
    )
    torch_out, ort_out = read_image(tmp_path / "torch.png"), read_image(tmp_path / "ort.png")
    assert np.abs(torch_out.astype(int) - ort_out).max() <= 1  # ≤ 1e-4 before 8-bit rounding
    refused = run(
        image, "--weights", weights, "--backend", "onnxruntime", "--tta", "2", check=False
    )
    assert refused.returncode == 1 and "needs gradients" in refused.stderr


@pytest.mark.slow
def test_exported_files_are_checked_for_role_and_weights(tmp_path, weights, crop):
    image = write_image(tmp_path / "a.png", crop)
    export = str(Path(sys.executable).parent / "reblur-export")
    files = {
        "mr.onnx": ["--weights", weights, "--module", "reblur"],
        "mine.onnx": ["--weights", weights],
        "l1.onnx": ["--weights", "unet-lite-l1"],
    }
    for name, args in files.items():
        cmd = [export, "--to", "onnx", *args, "-o", tmp_path / name]
        subprocess.run(list(map(str, cmd)), check=True, capture_output=True)

    def ort(onnx, *args):
        return run(image, "--backend", "onnxruntime", "--onnx", tmp_path / onnx, *args,
                   "-o", tmp_path / "out.png", "--overwrite", check=False)  # fmt: skip

    wrong_role = ort("mr.onnx", "--weights", weights)
    assert wrong_role.returncode == 1 and "holds the reblurring module" in wrong_role.stderr
    assert not (tmp_path / "out.png").exists()
    other_model = ort("l1.onnx", "--weights", weights)
    assert other_model.returncode == 1
    assert "exported from the bundled model 'unet-lite-l1', not from" in other_model.stderr
    alone = ort("l1.onnx")  # no --weights: the model the file came from, said so
    assert alone.returncode == 0, alone.stderr
    assert "running" in alone.stderr and "the bundled model 'unet-lite-l1'" in alone.stderr
    assert "using the bundled model" not in alone.stderr
    unknown = ort("mine.onnx")
    assert unknown.returncode == 1 and "not from a bundled model" in unknown.stderr
    assert all(len(r.stderr.strip().splitlines()) <= 2 for r in (wrong_role, other_model, unknown))


def test_ten_bit_video_stays_ten_bit(tmp_path, weights, data_dir):
    frames = sorted((data_dir / "gopro_clip_noGT").glob("*.png"))[:6]
    source = tmp_path / "in10.mp4"
    with av.open(str(source), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p10le"
        stream.codec_context.options = {"crf": "8"}
        for i, path in enumerate(frames):
            rgb = read_image(path)[200:296, 300:428].astype(np.uint16) * 257
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le").reformat(format="yuv420p10le")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    assert probe_video(source).bit_depth == 10
    run(source, "--weights", weights, "-o", tmp_path / "out.mp4")
    written = probe_video(tmp_path / "out.mp4")
    assert written.bit_depth == 10 and written.frames == 6
    decoded = [f.rgb for f in read_frames(tmp_path / "out.mp4", keep_depth=True)]
    assert decoded[0].dtype == np.uint16 and decoded[0].shape == (96, 128, 3)
    run(source, "--weights", weights, "-o", tmp_path / "out8.mp4", "--pix-fmt", "yuv420p")
    assert probe_video(tmp_path / "out8.mp4").bit_depth == 8
    bad = run(source, "--weights", weights, "-o", tmp_path / "bad.mp4", "--pix-fmt", "rgb99",
              check=False)  # fmt: skip
    assert bad.returncode == 1 and "unknown pixel format 'rgb99'" in bad.stderr
    assert not (tmp_path / "bad.mp4").exists()


@pytest.mark.slow
def test_batches_resume_and_skip_earlier_outputs(tmp_path, weights, crop):
    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, crop)
    run(tmp_path / "a.png", "--weights", weights, "-q")  # an earlier run: a_deblurred.png beside
    first = (tmp_path / "a_deblurred.png").stat().st_mtime_ns
    # A glob over the folder leaves the earlier output alone instead of deblurring it again.
    refused = run(tmp_path / "*.png", "--weights", weights, check=False)
    assert refused.returncode == 1 and "--skip-existing" in refused.stderr
    assert "frame" not in refused.stderr  # refused before any work
    resumed = run(tmp_path / "*.png", "--weights", weights, "--skip-existing")
    assert "1 item(s), 1 frame(s)" in resumed.stdout and "b_deblurred.png" in resumed.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.png", "a_deblurred.png", "b.png", "b_deblurred.png"
    ]  # fmt: skip
    assert (tmp_path / "a_deblurred.png").stat().st_mtime_ns == first
    again = run(tmp_path, "-o", tmp_path / "out", "--weights", weights, "-q")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    nothing = run(tmp_path / "*.png", "--weights", weights, "--skip-existing")
    assert "nothing to do" in nothing.stderr and again.returncode == nothing.returncode == 0


@pytest.mark.slow
def test_messages_are_single_lines_with_one_prefix(tmp_path, weights, crop, clip):
    (tmp_path / "empty.png").write_bytes(b"")
    failed = run(tmp_path / "empty.png", "--weights", weights, check=False)
    assert failed.returncode == 1 and failed.stdout == ""  # no summary naming an unwritten file
    assert failed.stderr.strip().splitlines() == [
        f"error: cannot decode {tmp_path / 'empty.png'}: not an image, or a corrupt one"
    ]
    good = write_image(tmp_path / "good.png", crop).read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])  # libpng complains on fd 2
    cut = run(tmp_path / "cut.png", "--weights", weights, check=False)
    assert cut.returncode == 1 and len(cut.stderr.strip().splitlines()) == 1
    assert cut.stderr.startswith(f"error: cannot decode {tmp_path / 'cut.png'}")
    usage = run(tmp_path / "empty.png", "--crf", "99", check=False)
    assert usage.returncode == 2 and usage.stderr.strip().splitlines()[-1].startswith("error: ")
    past = run(clip, "--weights", weights, "--start", "25", "--end", "40", "-o", tmp_path / "p.mp4")
    assert "warning: " in past.stderr and "--end 40 is past its end" in past.stderr
    assert probe_video(tmp_path / "p.mp4").frames == 5
    # Not on a terminal: plain progress lines, never a carriage return.
    assert "\r" not in past.stderr and "5/5 frame(s)" in past.stderr
    small_tile = run(write_image(tmp_path / "s.png", crop), "--weights", weights, "--tile", "8")
    assert small_tile.returncode == 0 and "overlap" not in small_tile.stderr


def test_photos_keep_exif_colour_profile_and_dpi(tmp_path, weights, crop):
    from PIL import Image, ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo = Image.fromarray(crop)
    exif = photo.getexif()
    exif[0x0110], exif[0x0112] = "reblur test camera", 6  # model; orientation: turned 90°
    for suffix in (".jpg", ".png"):
        source = tmp_path / f"photo{suffix}"
        photo.save(source, exif=exif, icc_profile=icc, dpi=(300, 300), quality=90)
        run(source, "--weights", weights)
        with Image.open(tmp_path / f"photo_deblurred{suffix}") as out:
            assert out.info["icc_profile"] == icc
            assert out.info["dpi"] == pytest.approx((300, 300), abs=0.01)
            assert out.getexif()[0x0110] == "reblur test camera" and out.getexif()[0x0112] == 6
        assert read_image(tmp_path / f"photo_deblurred{suffix}").shape == crop.shape
    small = tmp_path / "q50.jpg"
    run(tmp_path / "photo.jpg", "--weights", weights, "--quality", "50", "-o", small)
    assert small.stat().st_size < 0.8 * (tmp_path / "photo_deblurred.jpg").stat().st_size
