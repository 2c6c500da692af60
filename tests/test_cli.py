"""The console scripts and the demo, run as real subprocesses from the installed environment."""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reblur_deploy.io import probe_video, read_image

from .conftest import REPO

BIN = Path(sys.executable).parent


SCRIPTS = sorted(
    ep.name
    for ep in importlib.metadata.distribution("reblur-deploy").entry_points
    if ep.group == "console_scripts"
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_console_script_answers_help_h_and_version(script):
    for flag in ("--help", "-h"):
        result = subprocess.run([BIN / script, flag], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout
    result = subprocess.run([BIN / script, "--version"], capture_output=True, text=True)
    version = importlib.metadata.version("reblur-deploy")
    assert result.returncode == 0 and result.stdout.strip() == f"{script}, version {version}"


def test_demo_deblurs_the_samples_with_the_bundled_model(tmp_path):
    clip = REPO / "examples" / "samples" / "gopro_clip_480x270.mp4"
    cmd = [sys.executable, "-m", "reblur_deploy.demo", "--out", tmp_path, "--device", "cpu",
           "--tta", "1", "--clip", clip]  # fmt: skip
    result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "model: unet-lite" in result.stdout and "UNTRAINED" not in result.stderr
    sample = read_image(REPO / "reblur_deploy" / "assets" / "samples" / "gopro_blur_00_crop.png")
    out = read_image(tmp_path / "gopro_blur_00_crop_deblurred.png")
    both = read_image(tmp_path / "gopro_blur_00_crop_side_by_side.png")
    assert out.shape == sample.shape and both.shape == (270, 3 * 482, 3)  # input, L, L + TTA
    assert np.abs(out.astype(int) - sample).mean() > 0.5  # a trained model changes the picture
    line = next(line for line in result.stdout.splitlines() if "blur score" in line)
    scores = [float(v) for v in re.findall(r"\d\.\d{3}e[-+]\d\d", line)]
    assert "(input → deblurred → TTA)" in line and len(scores) == 3
    assert scores[2] < scores[1]  # the bundled MR sees blur: TTA lowers the score
    video = probe_video(tmp_path / "gopro_clip_480x270_side_by_side.mp4")
    assert (video.frames, video.width, video.height) == (12, 960, 270)


def test_reblur_run_uses_the_bundled_model_by_default(tmp_path):
    sample = REPO / "reblur_deploy" / "assets" / "samples" / "gopro_blur_00_crop.png"
    cmd = [BIN / "reblur-run", sample, "-o", tmp_path / "out.png", "--device", "cpu"]
    result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "using the bundled model 'unet-lite'" in result.stderr
    assert read_image(tmp_path / "out.png").shape == (270, 482, 3)


def test_demo_reports_bad_weights_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reblur_deploy.demo",
            "--weights",
            str(tmp_path / "nope.safetensors"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no weight file" in result.stderr
