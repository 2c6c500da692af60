import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reblur_deploy import ConfigError, Deblurrer, InputError
from reblur_deploy.models import MODELS, ResBlock, build

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


def test_untrained_networks_are_the_identity():
    x = torch.rand(1, 3, 16, 20)
    for name in MODELS:
        assert torch.equal(build(name)(x), x)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("size", [(37, 53), (1, 1), (2, 7), (64, 48)])
def test_every_model_keeps_any_image_size_through_the_deblurrer(name, size):
    model = randomized(
        build(
            name,
            **(
                {"widths": (8, 8, 8), "n_blocks": 1}
                if name == "unet"
                else {"n_blocks": 1, "width": 8}
            ),
        )
    )
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    out = Deblurrer({"deblur": model}, device="cpu")(image)
    assert out.shape == image.shape and out.dtype == np.uint8


def test_unet_refuses_sizes_it_cannot_take_with_a_clear_error():
    model = build("unet", widths=(4, 4, 4), n_blocks=0)
    with pytest.raises(InputError, match="multiples of 4"):
        model(torch.rand(1, 3, 37, 53))
    with pytest.raises(InputError, match="N×3×H×W"):
        model(torch.rand(1, 1, 8, 8))
    assert build("reblur", n_blocks=1, width=4)(torch.rand(1, 3, 37, 53)).shape == (1, 3, 37, 53)


def test_build_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        build("resnet")
    with pytest.raises(ConfigError, match="invalid config"):
        build("unet", depth=3)
    with pytest.raises(ConfigError, match="three positive widths"):
        build("unet", widths=(8, 8))


def test_zero_initialised_tail_still_trains_the_whole_network():
    model = build("unet", widths=(4, 6, 8), n_blocks=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    for _ in range(2):
        opt.zero_grad()
        F.l1_loss(model(x), y).backward()
        opt.step()
    assert model.head.weight.grad.abs().sum() > 0
