import numpy as np
import pytest
import torch
from skimage.exposure import match_histograms as skimage_match

from reblur_deploy import InputError, match_histograms
from reblur_deploy.io import read_image


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def pair(data_dir):
    blurry = read_image(data_dir / "gopro" / "blur" / "blur_03.png").astype(np.float32) / 255
    sharp = read_image(data_dir / "gopro" / "sharp" / "sharp_03.png").astype(np.float32) / 255
    return blurry[200:456, 300:684], sharp[100:400, 500:900]  # different sizes on purpose


@pytest.mark.parametrize("noise", [0.0, 0.02], ids=["8-bit-levels", "continuous"])
def test_equals_skimage_on_real_images(pair, noise):
    """exact=True is scikit-image's mapping to rounding; the default (binned) path is within
    half an 8-bit level of it, and identical on 8-bit levels (as floats and as uint8)."""
    source, reference = pair
    source = source + np.random.default_rng(0).normal(0, noise, source.shape).astype(np.float32)
    expected = skimage_match(source, reference, channel_axis=-1)

    def ours(**kw):
        out = match_histograms(to_tensor(source), to_tensor(reference), **kw)
        return out[0].permute(1, 2, 0).numpy()

    exact, default = ours(exact=True), ours()
    assert exact.dtype == default.dtype == np.float32
    assert np.abs(exact - expected).max() <= 1e-5
    assert np.abs(default - expected).max() <= 0.5 / 255 + 1e-6
    if noise == 0:
        assert np.array_equal(default, exact)
        as_uint8 = [to_tensor(np.rint(x * 255).astype(np.uint8)) for x in (source, reference)]
        assert torch.equal(match_histograms(*as_uint8), match_histograms(*as_uint8, exact=True))


def test_batches_are_matched_image_by_image(pair):
    source, reference = (to_tensor(x) for x in pair)
    batch = match_histograms(torch.cat([source, reference[..., :256, :384]]),
                             torch.cat([reference[..., :256, :384], source]))  # fmt: skip
    torch.testing.assert_close(batch[:1], match_histograms(source, reference[..., :256, :384]))
    torch.testing.assert_close(batch[1:], match_histograms(reference[..., :256, :384], source))


def test_matching_an_image_to_itself_changes_nothing(pair):
    image = to_tensor(pair[0])
    assert torch.equal(match_histograms(image, image), image)


def test_output_takes_the_reference_values_when_sizes_agree():
    """Exactly so for the exact mapping; within half an 8-bit level for the default."""
    torch.manual_seed(0)
    source, reference = torch.rand(1, 3, 20, 30), torch.rand(1, 3, 20, 30) ** 2
    values = reference.flatten(2).sort().values
    exact = match_histograms(source, reference, exact=True)
    torch.testing.assert_close(exact.flatten(2).sort().values, values)
    assert torch.equal(exact.flatten(2).argsort(), source.flatten(2).argsort())  # order is kept
    default = match_histograms(source, reference)
    assert (default.flatten(2).sort().values - values).abs().max() <= 0.5 / 255 + 1e-6


def test_other_dtypes_take_the_exact_path(pair):
    source, reference = (to_tensor(x) for x in pair)
    wide = match_histograms(source.double(), reference.double())
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide, match_histograms(source, reference, exact=True).double())
    levels = match_histograms((source * 1000).to(torch.int32), (reference * 1000).to(torch.int32))
    assert levels.dtype == torch.int32


def test_mismatched_shapes_are_refused():
    with pytest.raises(InputError, match="equal N and C"):
        match_histograms(torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4))
