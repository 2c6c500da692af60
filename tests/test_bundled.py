"""The bundled models: shipped in the package, loaded by name offline, trained by train.main
with the evaluation pairs held out, and better than their input on those pairs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from reblur_deploy import Deblurrer, load_weights
from reblur_deploy.io import read_image
from reblur_deploy.metrics import psnr
from reblur_deploy.pipeline import default_weights
from reblur_deploy.weights import ASSETS, BUNDLED

from .conftest import REPO

HELD_OUT = ("blur_04.png", "461_blur.png")  # bench/quality_bar.py and docs/MODEL_CARD.md


pytestmark = pytest.mark.usefixtures("one_thread")  # CI machines may be busy; see conftest


@pytest.fixture(scope="module")
def held_out_crops(data_dir):
    """Centre 256×256 crops of the two GOPRO pairs no bundled model was trained on."""
    pairs = []
    for name in HELD_OUT:
        blurry = read_image(data_dir / "gopro" / "blur" / name)
        sharp = read_image(data_dir / "gopro" / "sharp" / name.replace("blur", "sharp"))
        top, left = (blurry.shape[0] - 256) // 2, (blurry.shape[1] - 256) // 2
        pairs.append((blurry[top : top + 256, left : left + 256],
                      sharp[top : top + 256, left : left + 256]))  # fmt: skip
    return pairs


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_each_bundled_model_is_trained_on_the_training_split_and_helps(name, held_out_crops):
    loaded = load_weights(name)
    provenance = loaded.metadata["provenance"]
    assert provenance["trainer"] == "python -m train.main" and provenance["iterations"] > 0
    assert set(provenance["data"]["val_items"]) == set(HELD_OUT)  # held out of training
    assert (loaded.reblur is None) == name.endswith("-l1")
    model = Deblurrer(name, device="cpu")
    for blurry, sharp in held_out_crops:
        assert psnr(model(blurry), sharp) > psnr(blurry, sharp)


def test_the_bundled_files_stay_small_and_each_device_has_a_default():
    sizes = {path.name: path.stat().st_size for path in ASSETS.glob("*.safetensors")}
    assert set(sizes) == {f"{name}.safetensors" for name in BUNDLED}
    assert sum(sizes.values()) < 30e6  # the wheel must stay under 50 MB
    assert default_weights(torch.device("cpu")) == "unet-lite"
    assert default_weights(torch.device("cuda")) == "unet-reblur"


def test_the_quality_bar_script_reports_every_row_and_bar(tmp_path, data_dir):
    """bench/quality_bar.py on the full held-out frames (unet-lite, TTA 1 to keep it short)."""
    out = tmp_path / "bar.md"
    cmd = [sys.executable, REPO / "bench" / "quality_bar.py", "--data", data_dir / "gopro",
           "--tta", "1", "--out", out, "--figure", tmp_path / "crops.png"]  # fmt: skip
    result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stderr  # 1: a bar failed (the model card says)
    table = out.read_text()
    assert table == result.stdout.rstrip("\n") + "\n"
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 4 + 5  # two headers, four models, five bars
    assert "| PSNR above the input on every pair | PASS |" in table
    assert "| L1 + L_Reblur (unet-lite), TTA 1 |" in table
    assert read_image(tmp_path / "crops.png").shape == (256, 5 * 256, 3)  # 4 rows + sharp
