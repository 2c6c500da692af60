"""reblur-eval and reblur_deploy.eval on real GOPRO frames (crops where a model runs)."""

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reblur_deploy import (
    ConfigError,
    Deblurrer,
    DependencyError,
    InputError,
    TTAConfig,
    blur_score,
    save_weights,
)
from reblur_deploy.cli.eval import main as cli
from reblur_deploy.eval import evaluate_folders, evaluate_model, parse_tta_sweep, plot_report
from reblur_deploy.io import read_image, write_image
from reblur_deploy.io.pairs import image_data, match_pairs, paired_data
from reblur_deploy.metrics import niqe, psnr, ssim
from reblur_deploy.metrics.lpips import BACKBONE_ENV, AlexNetFeatures
from reblur_deploy.models import build

from .conftest import randomized

BIN = Path(sys.executable).parent
CROP = (slice(200, 488), slice(400, 784))  # 384×288: 4×3 NIQE blocks of textured street


@pytest.fixture(scope="module")
def small(tmp_path_factory, data_dir):
    """blur/ + sharp/ with crops of two GOPRO pairs, named as in the data set."""
    root = tmp_path_factory.mktemp("pairs")
    for blur, sharp in [("blur_00.png", "sharp_00.png"), ("461_blur.png", "461_sharp.png")]:
        write_image(root / "blur" / blur, read_image(data_dir / "gopro/blur" / blur)[CROP])
        write_image(root / "sharp" / sharp, read_image(data_dir / "gopro/sharp" / sharp)[CROP])
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    md = randomized(build("unet", widths=(8, 12, 16), n_blocks=2))
    mr = randomized(build("reblur", n_blocks=1, width=8), seed=1)
    return save_weights(
        tmp_path_factory.mktemp("w") / "small.safetensors", {"deblur": md, "reblur": mr}
    )


@pytest.fixture
def no_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(BACKBONE_ENV, raising=False)


# ------------------------------------------------------------------------------ pairing


def test_gopro_names_pair_blur_with_sharp(data_dir):
    pairs = match_pairs(data_dir / "gopro/blur", data_dir / "gopro/sharp")
    assert {p.source.name: p.gt.name for p in pairs} == {
        "461_blur.png": "461_sharp.png",
        **{f"blur_0{i}.png": f"sharp_0{i}.png" for i in range(6)},
    }
    same = match_pairs(data_dir / "gopro/sharp", data_dir / "gopro/sharp")  # exact names first
    assert all(p.source == p.gt for p in same)


def test_a_missing_partner_is_an_error_naming_it(small, tmp_path):
    (tmp_path / "pred").mkdir()
    for name in ("blur_00.png", "blur_07.png"):
        (tmp_path / "pred" / name).write_bytes((small / "blur/blur_00.png").read_bytes())
    with pytest.raises(InputError, match=r"blur_07\.png has no ground truth: no blur_07\.png or "):
        match_pairs(tmp_path / "pred", small / "sharp")
    (tmp_path / "pred" / "blur_07.png").unlink()
    with pytest.raises(InputError, match=r"461_sharp\.png has no image"):
        match_pairs(tmp_path / "pred", small / "sharp")


def test_paired_data_takes_the_gopro_large_layout(small, tmp_path):
    for seq in ("GOPR0384_11_00", "GOPR0385_11_01"):
        for kind in ("blur", "sharp"):
            (tmp_path / seq / kind).mkdir(parents=True)
            data = (small / kind / f"{kind}_00.png").read_bytes()
            (tmp_path / seq / kind / "000001.png").write_bytes(data)
    pairs = paired_data(tmp_path)
    assert [p.name for p in pairs] == ["GOPR0384_11_00/000001.png", "GOPR0385_11_01/000001.png"]
    assert all(p.gt.parent.name == "sharp" for p in pairs)
    with pytest.raises(InputError, match="paired data needs"):
        paired_data(small / "blur")


# ---------------------------------------------------------------------------- the tool


def test_reblur_eval_on_the_gopro_blurry_inputs(data_dir, tmp_path):
    """reblur-eval on existing images (the blurry inputs themselves) and their ground truth."""
    env = {k: v for k, v in os.environ.items() if k != BACKBONE_ENV}
    env["TORCH_HOME"] = str(tmp_path / "torch")  # no backbone: LPIPS says n/a
    result = subprocess.run(
        [BIN / "reblur-eval", "--pred", data_dir / "gopro/blur", "--gt", data_dir / "gopro/sharp",
         "--out", tmp_path / "t.json", "--out", tmp_path / "t.csv"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "| setting | images | LPIPS↓ | NIQE↓ | PSNR↑ | SSIM↑ | blur score↓ |"
    assert lines[2].startswith("| blur | 7 | n/a | 6.944 | 22.84 | 0.6869 | n/a |")
    assert "LPIPS: n/a (LPIPS needs the ImageNet AlexNet weights" in result.stderr
    reference = json.loads((data_dir / "reference/niqe_basicsr.json").read_text())
    report = json.loads((tmp_path / "t.json").read_text())
    per_image = report["rows"][0]["per_image"]
    assert len(per_image) == 7
    for image in per_image:
        assert image["niqe"] == pytest.approx(reference[f"gopro/blur/{image['image']}"], abs=0.01)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert float(rows[0]["psnr"]) == pytest.approx(22.84, abs=0.005) and rows[0]["lpips"] == ""


def test_cli_errors_are_one_line(small):
    runner = CliRunner()
    result = runner.invoke(cli, ["--gt", str(small / "sharp")])
    assert result.exit_code == 1 and "--gt goes with --pred" in result.output
    result = runner.invoke(cli, ["--pred", str(small / "sharp"), "--gt", str(small / "blur")])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "has no ground truth" in result.output
    result = runner.invoke(cli, ["--pred", str(small / "blur"), "--out", "table.xlsx"])
    assert result.exit_code == 1 and ".csv, .json or .md" in result.output
    for args in (["--data", f"images:{small / 'blur'}"], ["--pred", str(small / "blur")]):
        started = time.perf_counter()
        result = runner.invoke(cli, [*args, "--plot", "pd.png"])
        assert result.exit_code == 1 and "--plot needs ground truth" in result.output
        assert time.perf_counter() - started < 2  # refused before any image is measured


# ------------------------------------------------------------------------- folder mode


def test_folder_mode_values_match_the_metrics(small, no_backbone):
    report = evaluate_folders(small / "blur", small / "sharp", progress=False)
    (row,) = report.rows
    assert report.columns == ["lpips", "niqe", "psnr", "ssim", "blur_score"]
    for image, pair in zip(
        row.per_image, match_pairs(small / "blur", small / "sharp"), strict=True
    ):
        blur, sharp = read_image(pair.source), read_image(pair.gt)
        assert image["psnr"] == psnr(blur, sharp) and image["ssim"] == ssim(blur, sharp)
        assert image["niqe"] == niqe(blur)
        assert image["lpips"] is None and image["blur_score"] is None
    assert any(n.startswith("LPIPS: n/a") for n in report.notes)
    assert any(n.startswith("blur score: n/a") for n in report.notes)


def test_lpips_and_blur_score_columns_when_their_weights_are_given(small, weights, tmp_path):
    torch.manual_seed(0)
    torch.save(AlexNetFeatures().state_dict(), tmp_path / "alexnet.pth")
    report = evaluate_folders(
        small / "blur", small / "sharp", weights=weights, device="cpu",
        lpips_backbone=tmp_path / "alexnet.pth", progress=False,
    )  # fmt: skip
    means = report.table()[0]
    assert means["lpips"] > 0 and means["blur_score"] > 0 and not report.notes
    assert report.config["lpips_backbone"] == str(tmp_path / "alexnet.pth")


def test_worker_processes_give_the_same_numbers(small, no_backbone):
    one = evaluate_folders(small / "blur", small / "sharp", jobs=1, progress=False)
    two = evaluate_folders(small / "blur", small / "sharp", jobs=2, progress=False)
    assert one.rows[0].per_image == two.rows[0].per_image


# -------------------------------------------------------------------------- model mode


def test_model_mode_rows_are_the_deblurrer_outputs_measured(small, weights, no_backbone):
    report = evaluate_model(weights, f"paired:{small}", tta_sweep="0", device="cpu", progress=False)
    assert [r.setting for r in report.rows] == ["TTA 0"]
    assert report.columns == ["lpips", "niqe", "psnr", "ssim", "blur_score", "seconds"]
    deblur = Deblurrer(str(weights), device="cpu", backend="torch")  # as reblur-eval runs
    for image, pair in zip(report.rows[0].per_image, paired_data(small), strict=True):
        out = deblur(read_image(pair.source))
        sharp = read_image(pair.gt)
        assert image["psnr"] == pytest.approx(psnr(out, sharp), abs=1e-9)
        assert image["ssim"] == pytest.approx(ssim(out, sharp), abs=1e-9)
        assert image["niqe"] == pytest.approx(niqe(out), abs=1e-9)
        x = torch.from_numpy(out).permute(2, 0, 1)[None].float() / 255
        assert image["blur_score"] == pytest.approx(blur_score(x, deblur.reblur).item(), rel=1e-5)
        assert image["seconds"] > 0
    table = report.markdown().splitlines()
    assert table[0].endswith("| blur score↓ | s/img |") and table[2].startswith(
        "| TTA 0 | 2 | n/a |"
    )
    assert re.search(r"\| \d\.\d{3}e-\d\d \|", table[2])  # blur scores in scientific notation
    assert report.config["weights_sha256"] and report.config["tta_sweep"] == [0]


def test_model_mode_runs_each_tta_setting(small, weights, no_backbone, tmp_path):
    pairs = paired_data(small)[:1]
    report = evaluate_model(weights, pairs, tta_sweep=(0, 2), device="cpu", progress=False)
    table = report.table()
    assert [(e["setting"], e["tta_steps"], e["images"]) for e in table] == [
        ("TTA 0", 0, 1),
        ("TTA 2", 2, 1),
    ]
    assert all(e["psnr"] > 10 and e["niqe"] > 0 and e["blur_score"] > 0 for e in table)
    try:
        path = plot_report(report, tmp_path / "pd.png")
    except DependencyError as e:  # matplotlib is an optional extra
        assert "pip install 'reblur-deploy[plot]'" in str(e)
    else:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_ground_truth_mode_measures_niqe_and_blur_score(small, weights, data_dir):
    report = evaluate_model(weights, f"images:{small / 'blur'}", device="cpu", progress=False)
    assert report.columns == ["niqe", "blur_score", "seconds"]
    assert "psnr" not in report.markdown() and report.table()[0]["niqe"] > 0
    with pytest.raises(ConfigError, match="needs ground truth"):
        plot_report(report, small / "never.png")
    real = [p for p in image_data(data_dir / "real_blur_noGT") if p.name in ("07.png", "hanzi.jpg")]
    inputs = evaluate_folders(pairs=real, setting="input", progress=False)
    assert [round(i["niqe"], 2) for i in inputs.rows[0].per_image] == [5.93, 4.31]


def test_tile_is_passed_on_only_where_the_deblurrer_tiles(small, weights, no_backbone):
    pairs = paired_data(small)[:1]
    tiled = evaluate_model(weights, pairs, tile=128, tile_overlap=32, device="cpu", progress=False)
    assert tiled.config["tile"] == 128 and tiled.table()[0]["psnr"] > 10
    with pytest.raises(ConfigError, match="needs a tile size"):
        evaluate_model(weights, pairs, tile_overlap=32, device="cpu", progress=False)


# ----------------------------------------------------------------------------- reports


def test_report_files(small, no_backbone, tmp_path):
    report = evaluate_folders(small / "blur", small / "sharp", progress=False)
    report.write(tmp_path / "r.csv")
    report.write(tmp_path / "r.json")
    report.write(tmp_path / "r.md")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert rows[0]["setting"] == "blur" and rows[0]["images"] == "2"
    assert float(rows[0]["psnr"]) == pytest.approx(report.table()[0]["psnr"])
    document = json.loads((tmp_path / "r.json").read_text())
    assert [i["image"] for i in document["rows"][0]["per_image"]] == ["461_blur.png", "blur_00.png"]
    assert (tmp_path / "r.md").read_text() == report.markdown()
    assert len(report.per_image_markdown().splitlines()) == 4
    with pytest.raises(ConfigError):
        report.write(tmp_path / "r.txt")


def test_tta_lists():
    assert parse_tta_sweep("0,1,5,10") == [0, 1, 5, 10]
    for bad in ("", "1,1", "-1", "a"):
        with pytest.raises(ConfigError):
            parse_tta_sweep(bad)
    assert parse_tta_sweep("0, 5, 10") == parse_tta_sweep((0, 5, 10)) == [0, 5, 10]


def test_sequence_mode_measures_flicker_of_video_tta(data_dir, no_backbone):
    """Real REDS frames in order: the flicker column is the outputs' frame-to-frame change
    minus the sharp frames'; carry-over runs the frames in order."""
    pairs = paired_data(data_dir / "train" / "reds027_x4")[:5]
    config = TTAConfig(carry=1, lr=1e-4)
    report = evaluate_model("unet-lite", pairs, tta_sweep=(0, 2), tta_config=config, device="cpu",
                            progress=False, sequence=True)  # fmt: skip
    assert "flicker" in report.columns
    plain = report.rows[0]
    assert plain.per_image[0]["flicker"] is None  # no previous frame
    outputs = [Deblurrer("unet-lite", device="cpu")(read_image(p.source)) for p in pairs[:2]]
    sharp = [read_image(p.gt) for p in pairs[:2]]
    expected = (np.abs(outputs[1].astype(np.float32) - outputs[0]).mean()
                - np.abs(sharp[1].astype(np.float32) - sharp[0]).mean()) / 255  # fmt: skip
    assert plain.per_image[1]["flicker"] == pytest.approx(expected, abs=1e-6)
    assert all(np.isfinite(e["flicker"]) for row in report.rows for e in row.per_image[1:])
    assert "flicker↓" in report.markdown()
