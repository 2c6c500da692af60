import numpy as np
import pytest
import torch

from reblur_deploy import ConfigError, Deblurrer, TTAConfig
from reblur_deploy.io import read_image
from reblur_deploy.memory import FRAME_BYTES_PER_PIXEL, activation_bytes_per_pixel
from reblur_deploy.tiling import _ramp, run_tiled
from reblur_deploy.tta import PAPER_LR


@pytest.fixture(scope="module")
def image(data_dir):
    return read_image(data_dir / "gopro" / "blur" / "blur_02.png")[100:301, 200:503]  # 201×303


def test_tiles_equal_the_whole_frame_when_the_overlap_covers_the_receptive_field(image, small_unet):
    # small_unet sees about 17 px around each pixel; a quarter of a 72 px overlap covers that.
    whole = Deblurrer({"deblur": small_unet}, device="cpu")(image)
    tiled = Deblurrer({"deblur": small_unet}, device="cpu", tile=128, tile_overlap=72)(image)
    assert np.abs(whole.astype(int) - tiled).max() <= 1


def test_small_overlaps_blend_without_seams(image, small_unet):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        whole = small_unet(torch.nn.functional.pad(x, (0, 1, 0, 3), mode="reflect"))[
            ..., :201, :303
        ]
        tiled = run_tiled(small_unet, x, tile=64, overlap=16, divisor=4)
    error = (whole - tiled).abs()
    assert tiled.shape == x.shape and torch.isfinite(tiled).all()
    assert error.max() < 0.05  # bounded where the overlap is smaller than the receptive field


def test_windows_of_neighbours_sum_to_one():
    size, overlap = 64, 24
    left, right = _ramp(size, overlap, True, False), _ramp(size, overlap, False, True)
    total = torch.zeros(2 * size - overlap, dtype=torch.float64)
    total[:size] += left
    total[size - overlap :] += right
    torch.testing.assert_close(total, torch.ones_like(total))


def test_tiling_options_are_checked(small_unet):
    with pytest.raises(ConfigError, match="overlap"):
        Deblurrer({"deblur": small_unet}, tile=64, tile_overlap=64)
    with pytest.raises(ConfigError, match="tile must be at least 4"):
        Deblurrer({"deblur": small_unet}, tile=2)


def test_tiled_tta_adapts_on_tiles(image, small_unet, small_reblur):
    deblurrer = Deblurrer({"deblur": small_unet, "reblur": small_reblur}, device="cpu",
                          tta_steps=2, tile=128, tile_overlap=32)  # fmt: skip
    assert deblurrer.tta_config.crop == 128
    out = deblurrer(image)
    assert out.shape == image.shape and out.dtype == np.uint8


def test_a_frame_too_big_for_whole_frame_steps_adapts_on_crops_and_keeps_the_config(
    image, small_unet, small_reblur
):
    """Whole-frame passes fit the budget, whole-frame steps (twice the activations) do not:
    this call's steps run on crops planned for it, and the effective settings stay as they
    were."""
    image = np.tile(image, (2, 2, 1))  # large enough for crops smaller than the frame to help
    h, w = image.shape[:2]
    per_pixel = activation_bytes_per_pixel(small_unet, small_unet.size_divisor)
    budget = int((FRAME_BYTES_PER_PIXEL + 1.5 * per_pixel) * h * w)
    deblurrer = Deblurrer({"deblur": small_unet, "reblur": small_reblur}, device="cpu",
                          tta_steps=1, max_memory=budget)  # fmt: skip
    seen = []
    hook = small_unet.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    with pytest.warns(RuntimeWarning, match="adapting on"):
        out = deblurrer(image)
    hook.remove()
    assert out.shape == image.shape
    (step,) = [shape for shape in seen if shape[0] == 4]  # one step on 4 crops
    assert step[-1] < w and deblurrer.tta_stats.steps == [1]
    # crop None: nothing was changed in place (the rate: these weights record none)
    assert deblurrer.tta_config == TTAConfig(steps=1, lr=PAPER_LR)


def test_bgr_frames_and_streaming(image, small_unet):
    rgb = Deblurrer({"deblur": small_unet}, device="cpu", batch_size=3)
    bgr = Deblurrer({"deblur": small_unet}, device="cpu", batch_size=3, color="bgr")
    frames = [np.roll(image, shift, axis=1) for shift in range(5)]
    expected = [rgb(f) for f in frames]
    streamed = list(bgr.stream(f[..., ::-1] for f in frames))
    assert len(streamed) == 5
    for want, got in zip(expected, streamed, strict=True):
        assert np.abs(want.astype(int) - got[..., ::-1]).max() <= 1
    assert len(list(rgb.stream(iter(frames), latency=0))) == 5
