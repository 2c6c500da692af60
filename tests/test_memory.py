"""Frames too large for memory: tiled automatically, or refused with one line."""

import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
import torch

from reblur_deploy import Deblurrer, save_weights
from reblur_deploy.errors import ConfigError, InputError
from reblur_deploy.io import read_image, write_image
from reblur_deploy.memory import (
    HEADROOM,
    TilePlanner,
    activation_bytes_per_pixel,
    available_bytes,
    parse_size,
    plan_tile,
)
from reblur_deploy.models import build

from .conftest import randomized

# Runs reblur-run in this process and prints its peak memory (KiB) last: the largest increase
# of its anonymous resident memory while the command runs (bench.timing.PeakMemory, sampled every
# 2 ms), which is what the run allocates. Not the resident set's high-water mark (VmHWM): that
# counts the pages of torch's and OpenCV's libraries too, a third of a tiled run's (240 MB), and
# on these VMs how many of those are resident changes at any moment (the kernel's DAMON
# ``pageout`` scheme evicts cold pages, and the page cache holds what earlier processes loaded):
# the cause of the once-failed peak (a tiled run at 1.49 GB instead of 0.61 GB). Subtracting
# RssFile at the end was not enough: pages evicted after the peak made it read high.
PEAK = """
import sys
import torch
from reblur_deploy.bench.timing import PeakMemory
from reblur_deploy.cli.run import main
try:
    with PeakMemory(torch.device("cpu")) as memory:
        main(sys.argv[1:], standalone_mode=False)
finally:
    print(round(memory.peak_mib * 1024), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    md = randomized(build("unet", widths=(16, 24, 32), n_blocks=1))
    return str(save_weights(tmp_path_factory.mktemp("w") / "m.safetensors", {"deblur": md}))


@pytest.fixture(scope="module")
def large(data_dir, tmp_path_factory):
    """A real 2560×1440 frame (GOPRO, upscaled ×2): 3.7 Mpixel."""
    image = read_image(data_dir / "gopro" / "blur" / "blur_01.png")
    big = cv2.resize(image, (2560, 1440), interpolation=cv2.INTER_CUBIC)
    return write_image(tmp_path_factory.mktemp("in") / "large.png", big)


def peak_run(*args) -> tuple[subprocess.CompletedProcess, int]:
    result = subprocess.run([sys.executable, "-c", PEAK, *map(str, args)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    return result, int(result.stderr.strip().splitlines()[-1]) * 1024


def test_sizes_and_plans():
    assert parse_size("2G") == 2 * 2**30 and parse_size("512M") == 512 * 2**20
    assert parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size("4096") == 4096
    with pytest.raises(ConfigError):
        parse_size("lots")
    per_pixel = activation_bytes_per_pixel(build("unet"), 4)
    assert 1000 < per_pixel < 20000  # the paper's U-Net: 64 channels at full resolution
    shape = (1, 3, 720, 1280)
    assert plan_tile(shape, per_pixel, 64 * 2**30, 4, 4, 64) is None  # fits: no tiles
    tile = plan_tile(shape, per_pixel, 600 * 2**20, 4, 4, 64)
    assert tile is not None and tile % 4 == 0 and 128 <= tile < 720
    assert 24 * 720 * 1280 + per_pixel * 4 * tile**2 + 36 * 1280 * tile <= 600 * 2**20
    with pytest.raises(InputError, match="even in tiles"):
        plan_tile((1, 3, 20000, 20000), per_pixel, 4 * 2**30, 4, 4, 64)


def test_the_planner_keeps_a_fixed_tile_and_plans_one_for_the_budget():
    md, cpu = build("unet", widths=(8, 12, 16), n_blocks=1), torch.device("cpu")
    frame = torch.zeros(1, 3, 720, 1280)
    fixed = TilePlanner(md, cpu, 4, tile=256)
    assert (fixed.frame_tile(frame.shape), fixed.overlap) == (256, 64)
    planner = TilePlanner(md, cpu, 4, max_memory="96M")
    assert planner.budget() == 96 * 2**20
    with pytest.warns(RuntimeWarning, match="deblurring it in"):
        tile = planner.frame_tile(frame.shape)
    with pytest.warns(RuntimeWarning, match="adapting on"):
        crop = planner.crop_size(frame.shape, 4)
    assert tile % 4 == 0 and crop < tile < 720  # a step keeps twice a pass's activations


@pytest.mark.slow
def test_a_frame_too_large_for_the_budget_is_tiled_and_stays_within_it(tmp_path, weights, large):
    whole, whole_peak = peak_run(large, "--weights", weights, "-o", tmp_path / "whole.png")
    assert whole.returncode == 0, whole.stderr
    tiny, _ = peak_run(large, "--weights", weights, "-o", tmp_path / "tiny.png",
                       "--max-memory", "1M")  # fmt: skip
    assert tiny.returncode == 1 and not (tmp_path / "tiny.png").exists()
    assert "even in tiles" in tiny.stderr and "Traceback" not in tiny.stderr
    budget = 300 * 2**20
    tiled, tiled_peak = peak_run(large, "--weights", weights, "-o", tmp_path / "auto.png",
                                 "--max-memory", str(budget))  # fmt: skip
    assert tiled.returncode == 0, tiled.stderr
    warning = [line for line in tiled.stderr.splitlines() if "px tiles" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: a 2560×1440 frame"), tiled.stderr
    tile = int(warning[0].split(" px tiles")[0].rsplit(" ", 1)[1])
    # the engine --max-memory implies (eager: the planner's estimates are its)
    explicit, explicit_peak = peak_run(large, "--weights", weights, "-o",
                                       tmp_path / "explicit.png", "--tile", tile,
                                       "--tile-overlap", 64, "--backend", "torch")  # fmt: skip
    assert explicit.returncode == 0, explicit.stderr
    assert np.array_equal(read_image(tmp_path / "auto.png"), read_image(tmp_path / "explicit.png"))
    # Whole, the frame needs far more than the budget; tiled, the run stays near it.
    peaks = (whole_peak, tiled_peak, explicit_peak)
    assert whole_peak - max(tiled_peak, explicit_peak) > budget / 2, peaks
    difference = np.abs(
        read_image(tmp_path / "auto.png").astype(int) - read_image(tmp_path / "whole.png")
    )
    assert np.percentile(difference, 99.9) <= 2  # tiles blend into the untiled result


def test_tiles_written_into_the_input_array_give_the_same_frame(weights, large):
    """In place, each row of output lands where no later tile reads: the same bits."""
    image = read_image(large)[:300, :400]
    deblurrer = Deblurrer(weights, device="cpu", tile=128, tile_overlap=32, backend="torch")
    expected = deblurrer.run_arrays([image.copy()])[0]
    given = image.copy()
    (out,) = deblurrer.run_arrays([given], in_place=True)
    assert out is given and np.array_equal(out, expected)
    assert not np.array_equal(image, expected)  # the network changed it


@pytest.mark.slow
def test_a_tiled_frame_peaks_within_the_budget_plus_the_frame(tmp_path, weights, large):
    """A real 4000×3000 frame (36 MB decoded) under --max-memory 96M, with the default engine:
    beyond what the same run on a small image holds, the peak stays within the budget plus the
    decoded frame. The frame is deblurred tile by tile into its own array and turned into the
    encoder's BGR order in place; a second output array and the encoder's copy made it budget
    plus three frames."""
    frame = cv2.resize(read_image(large), (4000, 3000), interpolation=cv2.INTER_CUBIC)
    big = write_image(tmp_path / "big.png", frame)
    small = write_image(tmp_path / "small.png", frame[:96, :128])
    base, base_peak = peak_run(small, "--weights", weights, "-o", tmp_path / "s.png")
    assert base.returncode == 0, base.stderr
    budget = 96 * 2**20
    tiled, tiled_peak = peak_run(big, "--weights", weights, "-o", tmp_path / "b.png",
                                 "--max-memory", str(budget))  # fmt: skip
    assert tiled.returncode == 0 and "px tiles" in tiled.stderr, tiled.stderr
    assert tiled_peak - base_peak <= budget + frame.nbytes, (tiled_peak, base_peak)
    assert read_image(tmp_path / "b.png").shape == frame.shape


def test_a_small_tile_gets_a_fitting_overlap(tmp_path, weights, large):
    small = write_image(tmp_path / "s.png", read_image(large)[:96, :128])
    result, _ = peak_run(small, "--weights", weights, "-o", tmp_path / "o.png", "--tile", 16)
    assert result.returncode == 0, result.stderr


def png_header_only(path, width: int, height: int):
    """A PNG that says it is width×height RGB and holds no pixels: read only if decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    return path


def test_a_frame_that_cannot_fit_is_refused_from_its_header(tmp_path, weights):
    """Refused before decoding (this file has no pixels to decode), with the memory the run
    can still get: the 20000×20000 output alone is 1.1 GB, more than a 1 GB budget."""
    huge = png_header_only(tmp_path / "huge.png", 20000, 20000)
    result, _ = peak_run(huge, "--weights", weights, "--max-memory", "1G")
    assert result.returncode == 1 and "even in tiles, and 1.0 GB are available" in result.stderr
    # Without --max-memory: what is free, less the frame about to be decoded (60000² RGB).
    giant = png_header_only(tmp_path / "giant.png", 60000, 60000)
    result, _ = peak_run(giant, "--weights", weights)
    room = max(available_bytes(torch.device("cpu")) - 60000**2 * 3, 0) * HEADROOM
    said = parse_size(result.stderr.split("even in tiles, and ")[1].split(" are")[0])
    assert abs(said - room) < 0.1 * room + 2**29, result.stderr
