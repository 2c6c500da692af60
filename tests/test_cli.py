"""The console scripts and the demo, run as real subprocesses from the installed environment."""

import subprocess
import sys
from pathlib import Path

import pytest

from reblur_deploy.io import read_image

from .conftest import REPO

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script", ["reblur-bench"])
def test_console_scripts_exist_and_say_what_is_missing(script):
    result = subprocess.run([BIN / script, "anything"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "not available in this release yet" in result.stderr


def test_demo_writes_its_output_and_says_the_weights_are_untrained(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "reblur_deploy.demo", "--out", str(tmp_path), "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert "UNTRAINED WEIGHTS" in result.stderr
    sample = read_image(REPO / "reblur_deploy" / "assets" / "samples" / "gopro_blur_00_crop.png")
    out = read_image(tmp_path / "gopro_blur_00_crop_deblurred.png")
    both = read_image(tmp_path / "gopro_blur_00_crop_side_by_side.png")
    assert out.shape == sample.shape and both.shape == (270, 2 * 482, 3)


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
