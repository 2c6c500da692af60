"""scripts/gpu_train.sh, the one-call GPU training script, run on the CPU with a tiny budget."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reblur_deploy import load_weights

from .conftest import REPO
from .test_train_data import write_gopro_crops


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory, data_dir) -> Path:
    """scripts/gpu_data.py's layout, from 128² crops of the shared pairs (quick to train on)."""
    root = tmp_path_factory.mktemp("gpu_data")
    crops = write_gopro_crops(root / "crops", data_dir)
    for target, names in (("train/gopro", ["blur_00", "blur_01"]), ("train/reds", ["blur_02"]),
                          ("val", ["blur_04", "461_blur"])):  # fmt: skip
        for kind in ("blur", "sharp"):
            (root / target / kind).mkdir(parents=True)
            for name in names:
                for path in (crops / kind).glob(f"{name.replace('blur', kind)}*.png"):
                    (root / target / kind / path.name).write_bytes(path.read_bytes())
    (root / "train" / "photos").mkdir()
    for path in sorted((crops / "sharp").glob("*.png"))[:3]:
        (root / "train" / "photos" / path.name).write_bytes(path.read_bytes())
    return root


@pytest.mark.slow
def test_gpu_train_runs_its_stages_and_packages_unet_reblur(tmp_path, gpu_data):
    small = {"DEVICE": "cpu", "COMPILE": "0", "CROP": "32", "BATCH": "2", "VAL_CROP": "64"}
    env = {**os.environ, **small, "QUALITY": "0", "GPU_DATA": str(gpu_data), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_train.sh"), str(tmp_path), "0.02"],
                            capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {stage: load_weights(tmp_path / stage / "last.safetensors").metadata["provenance"]
            for stage in ("base", "mr", "joint", "l1")}  # fmt: skip
    for stage, share in (("base", 0.4), ("mr", 0.1), ("joint", 0.4)):
        assert runs[stage]["config"]["minutes"] == pytest.approx(0.02 * share)
    assert runs["base"]["config"]["init"] is None  # from scratch: nothing bundled is inherited
    assert runs["l1"]["config"]["mode"] == "baseline"  # the twin: L1 alone, as many iterations
    assert runs["l1"]["iterations"] == runs["joint"]["iterations"] >= 20
    assert all(run["config"]["channels_last"] for run in runs.values())
    assert all(run["config"]["keep_mean"] and run["config"]["sharp_share"] == 0.2
               for run in runs.values())  # the campaign's recipe (docs/TRAINING.md)  # fmt: skip
    packaged = load_weights(tmp_path / "unet-reblur.safetensors")
    assert packaged.metadata["packaged"]["storage"] == "float16"
    assert packaged.metadata["provenance"]["config"]["mode"] == "joint"
    assert set(packaged.metadata["provenance"]["data"]["val_items"]) == {
        "blur_04.png", "461_blur.png"}  # fmt: skip
