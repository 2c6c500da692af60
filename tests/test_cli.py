"""The console scripts and the demo, run as real subprocesses from the installed environment."""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from reblur_deploy import ConfigError
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


@pytest.mark.slow
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
    assert scores[0] > scores[1] > scores[2]  # the bundled MR sees blur, and TTA removes some
    niqe = [float(v) for v in re.search(r"NIQE (\S+) → (\S+) → (\S+),", line).groups()]
    assert niqe[1] < niqe[0]  # the deblurred sample is sharper by natural-image statistics
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


# ------------------------------------------------------------------ one vocabulary (issue 28)


def _commands():
    from reblur_deploy import demo
    from reblur_deploy.cli import bench, eval, run
    from reblur_deploy.export import cli as export

    return {"reblur-run": run.main, "reblur-eval": eval.main, "reblur-bench": bench.main,
            "demo": demo.main, "reblur-export": export.main}  # fmt: skip


# Each shared option → the commands that must take it.
SHARED = {
    "weights": {"reblur-run", "reblur-eval", "reblur-bench", "demo", "reblur-export"},
    "device": {"reblur-run", "reblur-eval", "reblur-bench", "demo"},
    "dtype": {"reblur-run", "reblur-eval", "reblur-export"},
    "tile": {"reblur-run", "reblur-eval"},
    "tile_overlap": {"reblur-run", "reblur-eval"},
    "tta_steps": {"reblur-run", "reblur-eval", "demo"},
    "tta_lr": {"reblur-run", "reblur-eval", "reblur-bench"},
    "tta_crop": {"reblur-run", "reblur-eval"},
}


def test_shared_options_have_one_spelling_and_one_help_in_every_command():
    """--weights, --device, --dtype, --tile, --tta, --tta-NAME: the same flag and help (up to a
    default said in words) in every command that takes them, and --tta is steps, 0 = off."""
    commands = {name: {p.name: p for p in cmd.params} for name, cmd in _commands().items()}
    for option, expected in SHARED.items():
        having = {name for name, params in commands.items() if option in params}
        assert having == expected, option
        params = [commands[name][option] for name in sorted(having)]
        assert len({tuple(p.opts) for p in params}) == 1, option
        assert len({p.help.split(" [default:")[0] for p in params}) == 1, option
    steps = {name: commands[name]["tta_steps"] for name in SHARED["tta_steps"]}
    assert all(p.opts == ["--tta"] for p in steps.values())
    assert {name: p.default for name, p in steps.items()} == {
        "reblur-run": 0, "reblur-eval": 0, "demo": 5,  # the demo is there to show TTA
    }  # fmt: skip


FLOATS = [("reblur-run", o) for o in ("--tta-lr", "--tta-tol", "--tta-scene-cut", "--fps")]
FLOATS += [("reblur-eval", o) for o in ("--tta-lr", "--tta-tol", "--tta-scene-cut")]


@pytest.mark.parametrize(("command", "option"), FLOATS)
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_float_options_refuse_nan_inf_and_out_of_range_before_any_work(command, option, value):
    args = ["--weights", "nope", option, value]  # the model would fail in another way
    args = ["in.png", *args] if command == "reblur-run" else ["--data", "paired:nope", *args]
    result = CliRunner().invoke(_commands()[command], args)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(errors) == 1 and f"Invalid value for '{option}'" in errors[0]


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory, data_dir):
    """paired:DIR with one 64×64 crop of a real GOPRO pair."""
    from reblur_deploy.io import write_image

    root = tmp_path_factory.mktemp("pairs")
    for kind in ("blur", "sharp"):
        crop = read_image(data_dir / f"gopro/{kind}/{kind}_00.png")[300:364, 500:564]
        write_image(root / kind / f"{kind}_00.png", crop)
    return root


def _eval(args):
    base = ["--weights", "unet-lite", "--device", "cpu", "--no-lpips", "--no-progress"]
    return CliRunner().invoke(_commands()["reblur-eval"], [*base, *args])


def test_reblur_eval_tta_n_is_n_steps_one_row(tiny_pairs):
    result = _eval(["--data", f"paired:{tiny_pairs}", "--tta", "2"])
    assert result.exit_code == 0, result.output
    rows = [line.split("|")[1].strip() for line in result.output.splitlines() if "| TTA" in line]
    assert rows == ["TTA 2"] and "deprecated" not in result.output


def test_reblur_eval_sweep_and_the_old_tta_list(tiny_pairs, monkeypatch):
    """--tta-sweep LIST gives a row each; the old --tta LIST still does, with a warning."""
    from reblur_deploy import eval as ev

    seen = []

    def evaluate_model(weights, data, *, tta_sweep, **options):
        seen.append(tta_sweep)
        raise ConfigError("stop here")

    monkeypatch.setattr(ev, "evaluate_model", evaluate_model)
    data = ["--data", f"paired:{tiny_pairs}"]
    result = _eval([*data, "--tta-sweep", "0,5"])
    assert "stop here" in result.output and "deprecated" not in result.output
    result = _eval([*data, "--tta", "0,5"])
    assert "warning: --tta LIST is deprecated; use --tta-sweep 0,5" in result.output
    assert "stop here" in result.output
    assert seen == ["0,5", "0,5"]
    result = _eval([*data, "--tta", "3", "--tta-sweep", "0,5"])
    assert result.exit_code == 1 and "not both" in result.output


def test_evaluate_model_takes_the_old_tta_keyword_with_a_warning(tiny_pairs):
    from reblur_deploy.eval import evaluate_model

    with pytest.warns(DeprecationWarning, match="use tta_sweep"):
        report = evaluate_model("unet-lite", f"paired:{tiny_pairs}", tta=(0,), device="cpu",
                                lpips=False, progress=False)  # fmt: skip
    assert [r.setting for r in report.rows] == ["TTA 0"]


def test_reblur_export_old_fp16_flag_warns_and_means_dtype_fp16(tmp_path):
    export = _commands()["reblur-export"]
    base = ["--to", "torchscript", "--weights", "unet-lite", "-o", str(tmp_path / "m.ts")]
    old = CliRunner().invoke(export, [*base, "--fp16"])
    new = CliRunner().invoke(export, [*base, "--dtype", "fp16"])
    assert old.exit_code == new.exit_code == 1 and not list(tmp_path.iterdir())
    assert old.output == "warning: --fp16 is deprecated; use --dtype fp16\n" + new.output
    assert "--dtype fp16 applies to onnx, trt and torch-trt only" in new.output
    both = CliRunner().invoke(export, [*base, "--fp32", "--dtype", "fp16"])
    assert both.exit_code == 2 and "--fp32 is the old spelling of --dtype" in both.output
