"""reblur-bench on tiny sizes: every section runs, reports ratios, and renders its tables."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reblur_deploy.bench import BenchConfig, parse_sizes, run, timed, to_markdown
from reblur_deploy.bench.drift import play_order
from reblur_deploy.errors import ConfigError

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def report():
    config = BenchConfig(
        device="cpu",
        sizes=((32, 48),),
        batches=(1, 2),
        steps=2,
        repeats=1,
        compile=False,  # compiling the paper's U-Net takes minutes on 2 cores
        backends=("eager", "tensorrt"),  # ONNX Runtime needs a few seconds of export
        hist_size=(48, 64),
        quick=True,
        model={"widths": (8, 12, 16), "n_blocks": 1},
    )
    return run(config)


@pytest.mark.slow
def test_every_section_reports_its_rows(report):
    sections = report["sections"]
    assert set(sections) == {"peak", "histmatch", "resblock", "tta", "video", "drift", "infer",
                             "profile"}  # fmt: skip
    assert sections["video"]["notes"] == ["not measured: no clip given (--video)"]
    assert sections["drift"]["notes"] == ["not measured: no paired sequence given (--drift)"]
    assert sections["peak"]["peak_tflops"]["float32"] > 0
    hist = {(r["implementation"], r["input"]): r for r in sections["histmatch"]["rows"]}
    assert hist[("scikit-image", "float32")]["speedup_vs_skimage_float"] == 1
    assert hist[("ours (C++)", "uint8")]["identical"]  # exact on 8-bit data
    assert hist[("ours (C++)", "float32")]["max_error_255"] <= 0.5
    assert hist[("ours, torch ops", "float32")]["max_error_255"] <= 0.5
    interleaved = sections["histmatch"]["interleaved"]
    assert interleaved["rounds"] >= 40 and interleaved["min"] <= interleaved["median"] > 0
    resblock = sections["resblock"]
    assert [r["variant"] for r in resblock["rows"]] == ["eager"]
    assert any("fused ResBlock not measured" in n for n in resblock["notes"])
    tta = sections["tta"]["rows"]
    assert [(r["mode"], r["variant"]) for r in tta] == [("full frame", "eager fp32")]
    assert tta[0]["s_2_steps"] > 0 and tta[0]["speedup_vs_eager"] == 1
    infer = sections["infer"]
    measured = {(r["backend"], r["precision"], r["batch"]) for r in infer["rows"]}
    assert measured >= {("eager", "fp32", 1), ("eager", "fp32", 2), ("eager", "bf16", 1)}
    assert all(r["fps"] > 0 and r["gflops_per_frame"] > 0 for r in infer["rows"])
    assert any(n.startswith("tensorrt: not measured") for n in infer["notes"])
    auto = [r for r in infer["rows"] if r["backend"].startswith("auto (")]
    assert auto and all(r["backend"] in ("auto (eager)", "auto (onnxruntime)") for r in auto)
    assert all(r["speedup"] > 0 for r in infer["rows"])
    profile = sections["profile"]
    for precision in ("fp32", "bf16"):
        layers = [r for r in profile["layers"] if r["precision"] == precision]
        whole = layers[-1]
        assert whole["layer"] == "whole network" and whole["share"] == 1
        assert sum(r["share"] for r in layers[:-1]) == pytest.approx(1)
        assert whole["gflop"] == pytest.approx(sum(r["gflop"] for r in layers[:-1]))
        assert whole["fraction_of_peak" if precision == "fp32" else "gflops_per_s"] > 0
    settings = {r["setting"]: r for r in profile["settings"]}
    assert settings["eager fp32, contiguous (NCHW)"]["speedup"] == 1
    assert "eager fp32, channels-last (NHWC)" in settings
    assert "**Where inference goes**" in to_markdown(report)


@pytest.mark.slow
def test_video_section_runs_each_setting_over_a_real_clip(data_dir):
    """REDS 027 frames (real blur, 320×180) through the bundled CPU model: per-frame
    Algorithm A takes its steps on every frame, the carried settings one after the first.
    The video mode's cost is also measured with the frames scaled to other sizes. (Which
    costs less is not asserted: timings are not tests.)"""
    clip = data_dir / "train" / "reds027_x4" / "blur"
    config = BenchConfig(device="cpu", sections=("video",), steps=2, video=str(clip),
                         video_frames=4, video_sizes=((90, 160), (360, 640)))  # fmt: skip
    report = run(config)
    section = report["sections"]["video"]
    rows = {r["setting"]: r for r in section["rows"]}
    assert list(rows) == [
        "no TTA",
        "per frame, 2 steps",
        "carry-over, whole frames",
        "video mode",
        "video mode, carried frames matched",
    ]
    assert (section["frames"], section["size"], section["weights"]) == (4, "320×180", "unet-lite")
    assert rows["no TTA"]["cost_vs_plain"] == 1
    per_frame = rows["per frame, 2 steps"]
    assert [r["steps_per_frame"] for r in rows.values()] == [0, 2, 1, 1, 1]
    assert all(r["s_per_frame"] > 0 and r["cost_vs_plain"] > 0 for r in rows.values())
    gains = {}
    for key in ("niqe", "niqe_tones_matched"):
        gains[key] = rows["no TTA"][key] - per_frame[key]
        assert per_frame[f"{key}_gain_kept"] == (1.0 if gains[key] > 0 else None)
    # plain inference matched to itself: the same frames, the same NIQE
    assert rows["no TTA"]["niqe_tones_matched"] == pytest.approx(rows["no TTA"]["niqe"])
    assert len(section["notes"]) == sum(gain <= 0 for gain in gains.values())
    assert all(r["niqe"] > 0 and abs(r["flicker"]) < 0.1 for r in rows.values())
    by_size = section["by_size"]
    assert [(r["size"], r["crops"]) for r in by_size] == [("160×90", "1 × 55×55"),
                                                          ("640×360", "1 × 220×220")]  # fmt: skip
    assert by_size[1]["adapted_share"] == pytest.approx(0.21, rel=0.01)
    assert all(r["s_per_frame"] > 0 and r["cost_vs_plain"] > 0 for r in by_size)
    markdown = to_markdown(report)
    assert "**Video TTA**" in markdown and "video mode's cost per frame size" in markdown


def test_drift_section_plays_a_real_sequence_as_one_shot(data_dir, tmp_path):
    """4 real REDS 027 pairs played forwards and backwards as a 12-frame shot: the per-frame and
    plain columns repeat from block to block (the same frames), the video mode's is measured
    on every frame of the shot."""
    assert play_order(3, 8) == [0, 1, 2, 2, 1, 0, 0, 1]
    source = data_dir / "train" / "reds027_x4"
    for sub in ("blur", "sharp"):
        (tmp_path / sub).mkdir()
        for path in sorted((source / sub).iterdir())[:4]:
            (tmp_path / sub / path.name).symlink_to(path)
    config = BenchConfig(device="cpu", sections=("drift",), steps=2, drift=str(tmp_path),
                         drift_frames=12)  # fmt: skip
    report = run(config)
    section = report["sections"]["drift"]
    rows = section["rows"]
    assert [r["frames"] for r in rows] == ["0–3", "4–7", "8–11"]
    assert (section["frames"], section["distinct_frames"], section["size"]) == (12, 4, "320×180")
    for column in ("per_frame", "no_tta"):
        assert rows[0][column] == pytest.approx(rows[1][column]) == pytest.approx(rows[2][column])
    assert all(20 < r["video_mode"] < 45 and abs(r["video_minus_per_frame"]) < 0.5 for r in rows)
    assert section["lowest_db"] == min(r["video_minus_per_frame"] for r in rows)
    assert "**Drift of the video mode**" in to_markdown(report)


def test_report_is_json_and_markdown_with_machine_and_versions(report):
    json.loads(json.dumps(report, default=str))
    markdown = to_markdown(report)
    machine = report["machine"]
    assert machine["versions"]["torch"] in markdown and machine["date"] in markdown
    for title in ("Measured peak", "Histogram matching", "MR forward", "Test-time", "Inference"):
        assert f"**{title}" in markdown
    assert markdown.count("|---|") >= 5


def test_a_bundled_model_can_be_measured_instead_of_the_paper_sized_one():
    config = BenchConfig(device="cpu", sections=("tta", "infer"), sizes=((32, 48),),
                         batches=(1,), steps=2, repeats=1, compile=False, backends=("eager",),
                         weights="unet-lite")  # fmt: skip
    infer = run(config)["sections"]["infer"]
    assert infer["model"] == "unet-lite"
    flops = {r["gflops_per_frame"] for r in infer["rows"]}
    assert len(flops) == 1 and flops.pop() < 0.1  # the lite U-Net, not the paper's (≈ 1.2)


def test_sizes_parse_and_bad_options_are_refused():
    assert parse_sizes("256,720p,480x640") == ((256, 256), (720, 1280), (480, 640))
    with pytest.raises(ConfigError, match="unknown size"):
        parse_sizes("huge")
    with pytest.raises(ConfigError, match="unknown section"):
        run(BenchConfig(device="cpu", sections=("speed",)))
    config = BenchConfig(device="cpu", sections=("peak",), repeats=1)
    assert run(config)["sizes"] == ["256"] and config.sizes is None  # the caller's is kept


def test_command_line_writes_json_markdown_and_appends(tmp_path):
    doc = tmp_path / "BENCH.md"
    doc.write_text("# Benchmarks\n")
    cmd = [BIN / "reblur-bench", "--only", "peak", "--device", "cpu", "--repeats", "1",
           "--json", tmp_path / "r.json", "--md", tmp_path / "r.md", "--append", doc]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "TFLOP/s" in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["sections"]["peak"]["rows"]
    assert doc.read_text().startswith("# Benchmarks\n") and "TFLOP/s" in doc.read_text()
    bad = subprocess.run([BIN / "reblur-bench", "--sizes", "tiny"], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown size" in bad.stderr


def test_cpu_peak_memory_counts_what_the_first_call_allocates_and_keeps():
    kept = {}

    def work():  # like an engine: buffers allocated by the first call, reused after
        if "buffer" not in kept:
            kept["buffer"] = torch.ones(16 * 2**20)  # 64 MiB
        kept["buffer"].add_(1)

    _, peak = timed(work, torch.device("cpu"), repeats=2, warmup=1)
    assert peak is not None and 48 <= peak <= 200, peak  # not ~0 (the reused memory)
