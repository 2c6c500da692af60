"""The C++ program (examples/cpp): built with CMake against the LibTorch of this torch and
Debian's OpenCV, run on real frames, and compared with the Python Deblurrer."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reblur_deploy import Deblurrer
from reblur_deploy.io import read_image

from .test_video import H, W, make_video, pattern

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# CI installs OpenCV's headers (make system-deps) and sets this: there a missing one fails.
REQUIRED = os.environ.get("REBLUR_REQUIRE_CPP") == "1"


def opencv_missing() -> str | None:
    if not shutil.which("cmake"):
        return "cmake is not installed"
    found = subprocess.run(["pkg-config", "--exists", "opencv4"], check=False).returncode == 0
    return None if found else "OpenCV's headers are not installed (make system-deps)"


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    why = opencv_missing()
    if why and not REQUIRED:
        pytest.skip(why)
    build = tmp_path_factory.mktemp("cpp")
    prefix = torch.utils.cmake_prefix_path
    for command in (
        ["cmake", "-S", REPO / "examples" / "cpp", "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}"],
        ["cmake", "--build", build, "-j", "2"],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return build / "reblur_deblur"


def export(tmp_path_factory, target: str, name: str) -> Path:
    """unet-lite exported with reblur-export --to ``target`` as ``name``."""
    path = tmp_path_factory.mktemp(target) / name
    command = [BIN / "reblur-export", "--to", target, "--weights", "unet-lite", "-o", path]
    subprocess.run(command, check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return export(tmp_path_factory, "torchscript", "unet-lite.ts")


def run(program, *args):
    return subprocess.run([program, *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_frames_equal_the_python_deblurrer_within_one_level(program, model, data_dir, tmp_path):
    """Real 1280×720 GOPRO frames and a 96×128 crop (padded to the size divisor) through
    the C++ program and through Deblurrer: at most 1/255 apart at every pixel."""
    frames = tmp_path / "frames"
    frames.mkdir()
    clip = sorted((data_dir / "gopro_clip_noGT").glob("*.png"))[:2]
    for path in clip:
        shutil.copy(path, frames / path.name)
    crop = read_image(clip[0])[201:298, 301:430]  # 97×129: not multiples of 4
    import cv2

    cv2.imwrite(str(frames / "crop.png"), crop[..., ::-1])
    result = run(program, model, frames, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "3 frame(s)" in result.stderr
    deblurrer = Deblurrer("unet-lite", device="cpu")
    for name in [p.name for p in clip] + ["crop.png"]:
        ours = read_image(tmp_path / "out" / name).astype(np.int16)
        expected = deblurrer(read_image(frames / name)).astype(np.int16)
        assert ours.shape == expected.shape
        assert np.abs(ours - expected).max() <= 1, name
    assert not list((tmp_path / "out").glob(".*"))  # no temporary file left


def test_a_video_becomes_frames_or_a_video(program, model, tmp_path):
    clip = make_video(tmp_path / "clip.mp4", n=5, audio=False)
    result = run(program, model, clip, tmp_path / "frames", "--frames", "3")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert written == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    assert read_image(tmp_path / "frames" / written[0]).shape == (H, W, 3)
    result = run(program, model, clip, tmp_path / "out.avi")
    assert result.returncode == 0 and (tmp_path / "out.avi").stat().st_size > 0, result.stderr
    import cv2

    capture = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "case", ["missing model", "not a model", "the reblurring module", "missing input", "usage"]
)
def test_bad_input_is_one_line(program, model, tmp_path, case):
    args = {
        "missing model": [tmp_path / "none.ts", tmp_path, tmp_path / "o"],
        "not a model": [Path(__file__), tmp_path, tmp_path / "o"],
        "the reblurring module": [tmp_path / "mr.ts", tmp_path, tmp_path / "o"],
        "missing input": [model, tmp_path / "nothing", tmp_path / "o"],
        "usage": [model],
    }[case]
    expected = {
        "missing model": "cannot read the model",
        "not a model": "is not a TorchScript model",
        "the reblurring module": "holds the reblur module",
        "missing input": "no such input",
        "usage": "expected MODEL INPUT OUTPUT",
    }[case]
    if case == "the reblurring module":
        command = [BIN / "reblur-export", "--to", "torchscript", "--weights", "unet-lite",
                   "--module", "reblur", "-o", tmp_path / "mr.ts"]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    result = run(program, *args)
    assert result.returncode in (1, 2) and result.stderr.startswith("error: ")
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_deploy_md_quotes_the_programs_frame_function():
    """docs/DEPLOY.md shows the compiled, tested code, not a snippet that drifts away."""
    doc = (REPO / "docs" / "DEPLOY.md").read_text()
    source = (REPO / "examples" / "cpp" / "reblur_deblur.cpp").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```cpp\n")[1:]]
    quoted = [b for b in blocks if "cv::Mat deblur(Model& model" in b]
    assert len(quoted) == 1 and quoted[0] in source


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return export(tmp_path_factory, "onnx", "unet-lite.onnx")


def one_error_line(result) -> str:
    assert result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


@pytest.mark.parametrize(
    "case", ["onnx", "onnx named .ts", "safetensors named .ts", "garbage", "empty"]
)
def test_a_wrong_model_file_is_named_in_one_line(program, onnx_model, tmp_path, case):
    """PyTorch's message about a file that is not a zip archive runs on about miniz and
    checkpoints: the program says what the file is instead (by its content where it can)."""
    from reblur_deploy.weights import bundled_path

    path = tmp_path / {"onnx": "unet-lite.onnx"}.get(case, "model.ts")
    if case.startswith("onnx"):
        shutil.copy(onnx_model, path)
    elif case.startswith("safetensors"):
        shutil.copy(bundled_path("unet-lite"), path)
    elif case == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        path.write_bytes(b"")
    result = run(program, path, tmp_path, tmp_path / "out")
    line = one_error_line(result)
    assert result.returncode == 1 and not (tmp_path / "out").exists()
    assert "miniz" not in line and "PytorchStreamReader" not in line
    expected = {
        "onnx": "is an ONNX model; the C++ program runs TorchScript files",
        "safetensors": "is a safetensors weight file; the C++ program runs TorchScript files",
        "garbage": "is not a TorchScript model (not a zip archive",
        "empty": "is not a TorchScript model (the file is empty)",
    }[case.split()[0]]
    assert line.startswith(f"error: {path} {expected}")


def damaged_clip(folder: Path, damage: str, suffix: str) -> Path:
    """A real 30-frame clip (10 fps, no audio) cut at half its length, or with 128 bytes in
    its middle overwritten."""
    clip = make_video(folder / f"clip.{suffix}", n=30, fps=10, audio=False)
    data = bytearray(clip.read_bytes())
    middle = len(data) // 2
    if damage == "truncated":
        del data[middle:]
    else:
        data[middle - 64 : middle + 64] = bytes(128)
    clip.write_bytes(bytes(data))
    return clip


@pytest.mark.parametrize(
    "damage, suffix, output",
    [("truncated", "mkv", "out.avi"), ("truncated", "mkv", "frames"),
     ("corrupt", "mkv", "out.avi"), ("corrupt", "mp4", "frames")],
)  # fmt: skip
def test_a_damaged_video_fails_and_writes_nothing(program, model, tmp_path, damage, suffix,
                                                  output):  # fmt: skip
    """OpenCV just stops reading at the damage: the program compares the frames read with the
    container's frame count, as reblur-run does, and leaves no partial output behind."""
    clip = damaged_clip(tmp_path, damage, suffix)
    result = run(program, model, clip, tmp_path / "out" / output, "--threads", "1")
    line = one_error_line(result)
    assert result.returncode == 1
    assert re.fullmatch(rf"error: {re.escape(str(clip))}: the video is truncated or corrupt after "
                        r"frame [1-9]\d* of 30; nothing was written \(--allow-truncated keeps the "
                        r"frames before the damage\)", line)  # fmt: skip
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_allow_truncated_keeps_the_frames_before_the_damage(program, model, tmp_path):
    clip = damaged_clip(tmp_path, "truncated", "mkv")
    result = run(program, model, clip, tmp_path / "frames", "--threads", "1", "--allow-truncated")
    assert result.returncode == 0, result.stderr
    warning = re.search(r"^warning: .*truncated or corrupt after frame (\d+) of 30; kept the "
                        r"\1 frames before it$", result.stderr, re.MULTILINE)  # fmt: skip
    assert warning, result.stderr
    kept = int(warning.group(1))
    written = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert written == [f"frame_{i:06d}.png" for i in range(kept)]


def test_a_folder_run_goes_on_past_an_unreadable_image(program, model, tmp_path):
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "a_broken.png").write_bytes(b"not a PNG at all")  # sorted first
    for i in range(3):
        cv2.imwrite(str(frames / f"f{i}.png"), pattern(i)[..., ::-1])
    result = run(program, model, frames, tmp_path / "out", "--threads", "1")
    assert result.returncode == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f0.png", "f1.png", "f2.png"]
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("3 frame(s)")
    assert lines[1:] == ["error: 1 of 4 inputs failed",
                         f"error: cannot read the image {frames / 'a_broken.png'}"]  # fmt: skip


@pytest.mark.parametrize(
    "option, value",
    [("--frames", "-3"), ("--frames", "0"), ("--frames", "2x"), ("--threads", "-1")],
)
def test_numeric_options_are_checked_before_any_work(program, model, tmp_path, option, value):
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "f0.png"), pattern(0)[..., ::-1])
    result = run(program, model, frames, tmp_path / "out", option, value)
    line = one_error_line(result)
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    minimum = 0 if option == "--threads" else 1
    assert line.startswith(f"error: {option} needs a whole number >= {minimum}, got '{value}'")
