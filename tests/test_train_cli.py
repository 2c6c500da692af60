"""`python -m train.main` as real subprocesses: config files, weights for reblur-run, resume,
bad data, and a real 2-process torchrun (gloo) run that matches a single process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from reblur_deploy import Deblurrer, TTAConfig, WeightsError, load_weights, save_weights
from reblur_deploy.io import read_image, write_image
from reblur_deploy.models import build
from reblur_deploy.train import checkpoint as ckpt
from reblur_deploy.train.config import TrainConfig
from reblur_deploy.train.loop import train
from reblur_deploy.train.package import package
from reblur_deploy.tta import PAPER_LR

from .conftest import REPO, randomized
from .test_train_data import write_gopro_crops

BIN = Path(sys.executable).parent
SMALL = ["--md-config", '{"widths":[8,12,16],"n_blocks":1}', "--mr-blocks", "1",
         "--mr-width", "8", "--crop", "32", "--batch-size", "2", "--device", "cpu"]  # fmt: skip


# one thread per process: tiny networks, and a shared 2-core machine (see test_train_loop)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks; see conftest


def run(*args, tool=(sys.executable, "-m", "train.main"), timeout=300):
    return subprocess.run(
        [*tool, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def test_help_documents_every_option():
    result = run("--help")
    assert result.returncode == 0
    for f in fields(TrainConfig):
        flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
        assert flag in result.stdout, flag
    for text in ("--config", "synthetic:skimage", "names:blur_04,461", "torchrun", "--resume"):
        assert text in result.stdout


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, data_dir):
    return write_gopro_crops(tmp_path_factory.mktemp("gopro"), data_dir)


@pytest.mark.slow
def test_a_run_from_a_toml_file_gives_weights_that_reblur_run_loads(tmp_path, data_dir, pairs):
    out = tmp_path / "run"
    (tmp_path / "small.toml").write_text(
        f'data = ["paired:{pairs}"]\n'
        'val = ["names:blur_04,461"]\n'
        "val_crop = 64\n"
        "crop = 32\n"
        "batch_size = 2\n"
        "iters = 100\n"
        "checkpoint_every = 2\n"
        "mr_blocks = 1\n"
        "mr_width = 8\n"
        "[md_config]\nwidths = [8, 12, 16]\nn_blocks = 1\n"
    )
    result = run(
        "--config", tmp_path / "small.toml", "--iters", "3", "--out", out, "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # progress into a pipe: plain lines (count, rate, losses), no carriage-return bar
    assert "\r" not in result.stderr and "3/3 it(s)" in result.stderr and "it/s" in result.stderr
    assert (
        "validation PSNR" in result.stderr and f"weights: {out}/last.safetensors" in result.stderr
    )
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["iter"] == 3 and lines[-1]["val_images"] == 2
    assert [i for i, _ in ckpt.list_checkpoints(out)] == [2, 3]
    meta = load_weights(out / "last.safetensors").metadata
    provenance = meta["provenance"]
    assert "--iters 3" in provenance["command"] and provenance["iterations"] == 3
    assert provenance["config"]["md_config"] == {"widths": [8, 12, 16], "n_blocks": 1}
    assert sorted(provenance["data"]["val_items"]) == ["461_blur.png", "blur_04.png"]

    crop = read_image(data_dir / "gopro" / "blur" / "blur_04.png")[300:364, 600:696]
    image = write_image(tmp_path / "crop.png", crop)
    deblurred = run(image, "--weights", out / "last.safetensors", "-o", tmp_path / "o.png", "-q",
                    tool=(str(BIN / "reblur-run"),))  # fmt: skip
    assert deblurred.returncode == 0, deblurred.stderr
    assert read_image(tmp_path / "o.png").shape == crop.shape

    again = run("--config", tmp_path / "small.toml", "--out", out)
    assert again.returncode == 1 and "already holds a training run" in again.stderr
    resumed = run("--resume", "--out", out, "--iters", "4", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "changed options (iters)" in resumed.stderr
    assert ckpt.read_state(ckpt.checkpoint_path(out, 4))["iteration"] == 4
    finished = run("--resume", "--out", out, "--no-progress")
    assert finished.returncode == 0 and "has finished all 4 iterations: nothing to do" in (
        finished.stderr
    )


def test_nan_options_and_sigterm_end_with_one_line(tmp_path, pairs):
    """A non-finite float stops before any work; SIGTERM stops like Ctrl-C, with a message."""
    bad = run("--data", f"paired:{pairs}", "--iters", "2", "--lr", "nan", "--out", tmp_path / "a")
    assert (
        bad.returncode == 1
        and bad.stderr.strip() == "error: options: lr = 'nan' is not a valid float"
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "train.main", "--data", f"paired:{pairs}", "--iters", "100000",
         "--crop", "32", "--batch-size", "1", "--md-config", '{"widths":[8,12,16],"n_blocks":1}',
         "--mr-blocks", "1", "--mr-width", "8", "--no-progress", "--log-every", "1",
         "--device", "cpu", "--out", str(tmp_path / "b")],
        stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    metrics = tmp_path / "b" / "metrics.jsonl"
    for _ in range(600):  # training has started once a metrics line is written
        if metrics.exists() and metrics.read_text():
            break
        time.sleep(0.1)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1].startswith("terminated (SIGTERM); resume from")


def test_bad_data_stops_before_training_with_one_line(tmp_path, data_dir):
    for folder in ("blur", "sharp"):
        image = read_image(data_dir / "gopro" / folder / f"{folder}_00.png")[:64, :64]
        write_image(tmp_path / "d" / folder / f"{folder}_0.png", image)
    (tmp_path / "d" / "blur" / "blur_1.png").write_bytes(b"garbage")
    write_image(tmp_path / "d" / "sharp" / "sharp_1.png", np.zeros((64, 64, 3), np.uint8))
    result = run("--data", f"paired:{tmp_path / 'd'}", "--iters", "2", "--out", tmp_path / "run",
                 *SMALL)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "blur_1.png" in errors[0] and "bad training data" in errors[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


# Runs ``python -m train.main``'s entry point, then reports the native threads still running:
# gloo's threads outliving the run made processes abort at exit now and then (SIGABRT).
# Each rank writes its own file (two ranks' stderr lines can interleave).
THREAD_PROBE = """
import os, sys
from pathlib import Path
from reblur_deploy.train.main import main
code = main(sys.argv[1:])
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
Path(__file__).with_name(f"threads-{os.environ['RANK']}.txt").write_text(" ".join(names))
sys.exit(code)
"""


@pytest.mark.slow
def test_torchrun_with_two_processes_matches_one_process(tmp_path, pairs):
    """gloo, 2 processes × 1 crop = the same global batch of 2 as one process; no thread left."""
    args = ["--data", f"paired:{pairs}", "--val", "names:461", "--val-crop", "64",
            "--iters", "3", "--no-progress", *SMALL]  # fmt: skip
    probe = tmp_path / "probe.py"
    probe.write_text(THREAD_PROBE)
    result = run("--standalone", "--nproc-per-node", "2", probe, *args,
                 "--out", tmp_path / "ddp", tool=(str(BIN / "torchrun"),))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    left = [(tmp_path / f"threads-{rank}.txt").read_text() for rank in (0, 1)]
    assert not any("gloo" in names for names in left), left
    state = ckpt.read_state(ckpt.checkpoint_path(tmp_path / "ddp", 3))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in lines] == [3, 3]  # rank 0 logs, once
    single = TrainConfig.from_dict(
        {"data": [f"paired:{pairs}"], "val": ["names:461"], "val_crop": 64,
         "iters": 3, "progress": False, "md_config": {"widths": [8, 12, 16], "n_blocks": 1},
         "mr_blocks": 1, "mr_width": 8, "crop": 32, "batch_size": 2, "device": "cpu",
         "out": str(tmp_path / "one")}
    )  # fmt: skip
    one = train(single)
    a, b = load_file(tmp_path / "ddp" / "last.safetensors"), load_file(one.weights)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert json.loads(lines[-1])["val"]["psnr"] == pytest.approx(one.metrics["psnr"], abs=1e-3)


def test_package_stores_float16_checks_the_outputs_and_keeps_provenance(tmp_path):
    md = randomized(build("unet", widths=[8, 12, 16], n_blocks=1))
    mr = randomized(build("reblur", n_blocks=1, width=8))
    source = save_weights(tmp_path / "run.safetensors", {"deblur": md, "reblur": mr},
                          {"provenance": {"command": "python -m train.main ..."}})  # fmt: skip
    assets = tmp_path / "assets"
    assets.mkdir()
    with pytest.raises(WeightsError, match="packaged outputs differ"):
        package(str(source), "unet-lite", fp16=True, tolerance=1e-9, assets=assets)
    assert list(assets.iterdir()) == []  # nothing left behind
    report = package(str(source), "unet-lite", fp16=True, tolerance=2e-3, assets=assets)
    assert "float16" in report and [p.name for p in assets.iterdir()] == ["unet-lite.safetensors"]
    loaded = load_weights(assets / "unet-lite.safetensors")
    assert loaded.metadata["provenance"]["command"] == "python -m train.main ..."
    packaged = loaded.metadata["packaged"]
    assert packaged["storage"] == "float16" and 0 < packaged["sample_max_abs_diff"] <= 2e-3
    with pytest.raises(WeightsError, match="not a bundled model name"):
        package(str(source), "my-model", fp16=False, tolerance=1e-3, assets=assets)


def test_a_packaged_tta_rate_is_the_default_of_tta_and_an_explicit_one_wins(tmp_path):
    md = randomized(build("unet", widths=[8, 12, 16], n_blocks=1))
    mr = randomized(build("reblur", n_blocks=1, width=8))
    source = save_weights(tmp_path / "run.safetensors", {"deblur": md, "reblur": mr})
    plain = Deblurrer(source, device="cpu", tta_steps=1)
    assert plain.tta_config.lr == PAPER_LR == 3e-6  # nothing recorded: the paper's
    with pytest.raises(WeightsError, match="tta-lr must be positive"):
        package(str(source), "unet-lite", False, 1e-3, assets=tmp_path, tta_lr=0.0)
    package(str(source), "unet-lite", False, 1e-3, assets=tmp_path, tta_lr=1e-5)
    packaged = tmp_path / "unet-lite.safetensors"
    assert load_weights(packaged).metadata["tta_lr"] == 1e-5
    assert Deblurrer(packaged, device="cpu", tta_steps=1).tta_config.lr == 1e-5
    explicit = Deblurrer(packaged, device="cpu", tta=TTAConfig(steps=1, lr=2e-6))
    assert explicit.tta_config.lr == 2e-6


def test_a_campaigns_learning_curve_prints_as_the_table_the_docs_copy(tmp_path):
    """--curve renders the committed ×4 study's curve.jsonl, one row per point."""
    tool = (sys.executable, "-m", "train.campaign")
    result = run(REPO / "campaigns" / "x4.toml", "--curve", tool=tool)
    assert result.returncode == 0, result.stderr
    points = (REPO / "campaigns" / "x4" / "curve.jsonl").read_text().splitlines()
    rows = result.stdout.strip().splitlines()[2:]
    assert len(rows) == len(points) >= 2
    first = json.loads(points[0])
    assert rows[0].startswith(f"| {first['iteration']:,} ({first['twin_iteration']:,}) | ")
    model, twin = (first["rows"][key]["psnr"] for key in ("model", "baseline"))
    assert f"{model:.2f} / {twin:.2f}" in rows[0]
    missing = run(tmp_path / "none.toml", "--curve", tool=tool)
    assert missing.returncode != 0 and "none/curve.jsonl does not exist" in missing.stderr
    untimed = run(REPO / "campaigns" / "x4.toml", tool=tool)
    assert untimed.returncode == 2 and "--minutes must be given" in untimed.stderr


@pytest.mark.slow
def test_a_campaign_session_trains_the_leader_then_brings_the_twin_to_its_iteration(
    tmp_path, pairs
):
    """python -m train.campaign: a stage, then two members from its weights in one session;
    a second session with nothing left."""
    campaign = tmp_path / "tiny.toml"
    campaign.write_text(
        f"""[common]
iters = 4
data = ["paired:{pairs}"]
md_config = {{ widths = [8, 12, 16], n_blocks = 1 }}
mr_blocks = 1
mr_width = 8
crop = 64
batch_size = 2
checkpoint_every = 2
device = "cpu"
tensorboard = "off"
[stages.base]
mode = "baseline"
iters = 2
[members.joint]
mode = "joint"
init = "@base"
[members.l1]
mode = "baseline"
init = "@base"
"""
    )
    tool = (sys.executable, "-m", "train.campaign")
    for session in range(2):
        result = run(campaign, "--minutes", 5, "--no-score", tool=tool)
        assert result.returncode == 0, result.stderr
        saved = json.loads((tmp_path / "tiny" / "joint" / "config.json").read_text())
        assert (saved["channels_last"], saved["batch_size"]) == (session == 1, 2)
        if session == 0:  # a resumed member takes how it runs (here the layout) from the file,
            # and what it computes (here the batch size) from its checkpoint
            text = campaign.read_text().replace("batch_size = 2", "batch_size = 3")
            campaign.write_text(
                text.replace("[stages.base]", "channels_last = true\n[stages.base]")
            )
    folder = tmp_path / "tiny"
    ledger = [json.loads(line) for line in (folder / "ledger.jsonl").read_text().splitlines()]
    assert [sorted(s["members"]) for s in ledger] == [["joint", "l1", "stages/base"], ["joint"]]
    assert ledger[0]["members"]["stages/base"]["to"] == 2
    first = ledger[0]["members"]
    assert first["joint"]["to"] == first["l1"]["to"] == 4 and first["joint"]["cpu_s"] > 0
    assert ledger[1]["members"]["joint"] == {**ledger[1]["members"]["joint"], "from": 4, "to": 4}
    for member, mode in (("joint", "joint"), ("l1", "baseline")):
        provenance = load_weights(folder / member / "last.safetensors").metadata["provenance"]
        assert provenance["config"]["mode"] == mode
        assert provenance["init"]["weights"] == str(folder / "stages" / "base" / "last.safetensors")
