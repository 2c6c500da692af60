"""The C++ program (examples/cpp): built with CMake against the LibTorch of this torch and
Debian's OpenCV, run on real frames, and compared with the Python Deblurrer."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reblur_deploy import Deblurrer
from reblur_deploy.io import read_image

from .test_video import H, W, make_video

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


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "unet-lite.ts"
    command = [BIN / "reblur-export", "--to", "torchscript", "--weights", "unet-lite", "-o", path]
    subprocess.run(command, check=True, capture_output=True)
    return path


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
