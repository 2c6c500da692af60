import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reblur_deploy import ConfigError, Deblurrer
from reblur_deploy.models import ResBlock, build

from .conftest import randomized


def conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out  # weights + bias (transposed convs count the same)


def test_unet_parameter_count_matches_table_a():
    table_a = (
        conv_params(3, 64, 5)
        + conv_params(64, 128, 3)
        + conv_params(128, 192, 3)
        + 8 * 2 * conv_params(192, 192, 3)
        + conv_params(192, 128, 3)
        + conv_params(128, 64, 3)
        + conv_params(64, 3, 5)
    )
    model = build("unet")
    assert sum(p.numel() for p in model.parameters()) == table_a


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_reblur_parameter_count_matches_table_c(n):
    table_c = conv_params(3, 64, 5) + n * 2 * conv_params(64, 64, 5) + conv_params(64, 3, 5)
    model = build("reblur", n_blocks=n)
    assert sum(p.numel() for p in model.parameters()) == table_c


def test_defaults_are_the_papers():
    assert build("unet").config == {"widths": [64, 128, 192], "n_blocks": 8}
    assert build("reblur").config == {"n_blocks": 2, "width": 64}
    assert build("unet").size_divisor == 4
    assert build("reblur").size_divisor == 1


def test_resblock_is_conv_relu_conv_plus_identity():
    torch.manual_seed(0)
    block = ResBlock(4, 5)
    x = torch.randn(2, 4, 9, 11)
    c1, c2 = block.body[0], block.body[2]
    expected = x + F.conv2d(
        F.relu(F.conv2d(x, c1.weight, c1.bias, padding=2)), c2.weight, c2.bias, padding=2
    )
    torch.testing.assert_close(block(x), expected)
    assert (block(x) < 0).any()  # no activation after the addition


# The deblurring modules (unet, srn, dhn) share one battery in test_deblur_models.py: identity
# when untrained, any size through the Deblurrer, clear size errors, training, compile.


def test_reblur_is_the_identity_untrained_and_takes_any_size():
    x = torch.rand(1, 3, 37, 53)
    assert torch.equal(build("reblur")(x), x)
    model = randomized(build("reblur", n_blocks=1, width=8))
    assert model(x).shape == x.shape
    image = np.random.default_rng(0).integers(0, 256, (2, 7, 3), dtype=np.uint8)
    assert Deblurrer({"deblur": model}, device="cpu")(image).shape == image.shape


def test_build_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        build("resnet")
    with pytest.raises(ConfigError, match="invalid config"):
        build("unet", depth=3)
    with pytest.raises(ConfigError, match="three positive widths"):
        build("unet", widths=(8, 8))
