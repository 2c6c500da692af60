"""One test battery for every deblurring module MD (unet, srn, dhn), then what is specific to each.

The battery runs the real architectures at narrow widths (the paper's layer structure, fewer
channels) so that it stays fast on a 2-core CPU; parameter counts, FLOPs and the identity test
use the paper's default configs.
"""

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reblur_deploy import ConfigError, Deblurrer, InputError, load_weights, save_weights
from reblur_deploy.models import MODELS, build, dhn, name_of, srn
from reblur_deploy.models.blocks import up_conv

DEBLUR = ("unet", "srn", "dhn")
DEFAULTS = {
    "unet": {"widths": [64, 128, 192], "n_blocks": 8},
    "srn": {"widths": [32, 64, 128], "n_blocks": 3},
    "dhn": {"widths": [32, 64, 128], "n_blocks": 2, "n_levels": 4},
}
SIZE_DIVISOR = {"unet": 4, "srn": 16, "dhn": 4, "reblur": 1}
SMALL = {
    "unet": {"widths": (8, 12, 16), "n_blocks": 1},
    "srn": {"widths": (8, 12, 16), "n_blocks": 1},
    "dhn": {"widths": (8, 12, 16), "n_blocks": 1},
}
# torch.compile generates (and gcc builds) one C++ kernel per fused op and shape: equal widths
# let the three networks share kernels, and SRN, whose three scales triple its shapes, skips
# the ResBlocks (compiled in the other two) so that a cold compile cache stays fast.
COMPILE = {
    "unet": {"widths": (4, 4, 4), "n_blocks": 1},
    "srn": {"widths": (4, 4, 4), "n_blocks": 0},
    "dhn": {"widths": (4, 4, 4), "n_blocks": 1, "n_levels": 2},
}
README = Path(__file__).resolve().parents[1] / "README.md"


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise every zero-initialised output conv, so no level or scale is the identity."""
    torch.manual_seed(seed)
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d) and not layer.weight.any():
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.normal_(layer.bias, std=0.01)
    return model.eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- parameter counts, computed from the layer lists in the docstrings ----------------------


def conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out  # weights + bias (transposed convs count the same)


def res_blocks(c: int, k: int, n: int) -> int:
    return n * 2 * conv_params(c, c, k)


def srn_params(widths=(32, 64, 128), n=3) -> int:
    w1, w2, w3 = widths
    return (
        conv_params(6, w1, 5) + res_blocks(w1, 5, n)  # in-block
        + conv_params(w1, w2, 5) + res_blocks(w2, 5, n)  # down 1
        + conv_params(w2, w3, 5) + res_blocks(w3, 5, n)  # down 2
        + res_blocks(w3, 5, n) + conv_params(w3, w2, 4)  # up 1
        + res_blocks(w2, 5, n) + conv_params(w2, w1, 4)  # up 2
        + res_blocks(w1, 5, n) + conv_params(w1, 3, 5)  # out-block
    )  # fmt: skip


def dhn_level_params(widths=(32, 64, 128), n=2) -> int:
    w1, w2, w3 = widths
    encoder = (
        conv_params(3, w1, 3) + res_blocks(w1, 3, n)
        + conv_params(w1, w2, 3) + res_blocks(w2, 3, n)
        + conv_params(w2, w3, 3) + res_blocks(w3, 3, n)
    )  # fmt: skip
    decoder = (
        res_blocks(w3, 3, n) + conv_params(w3, w2, 4)
        + res_blocks(w2, 3, n) + conv_params(w2, w1, 4)
        + res_blocks(w1, 3, n) + conv_params(w1, 3, 3)
    )  # fmt: skip
    return encoder + decoder


def test_srn_parameter_count_matches_its_docstring():
    expected = srn_params()
    assert n_params(build("srn")) == expected == 6_881_251
    assert f"{expected:,} parameters" in srn.__doc__
    assert n_params(build("srn", widths=(8, 12, 16), n_blocks=1)) == srn_params((8, 12, 16), 1)


def test_dhn_parameter_count_matches_its_docstring():
    level = dhn_level_params()
    assert n_params(build("dhn")) == 4 * level == 7_232_524
    assert f"{level:,} parameters per level and {4 * level:,}" in dhn.__doc__
    for n_levels in (1, 2):
        model = build("dhn", widths=(8, 12, 16), n_blocks=1, n_levels=n_levels)
        assert n_params(model) == n_levels * dhn_level_params((8, 12, 16), 1)


# ---- the shared battery -----------------------------------------------------------------------


@pytest.mark.parametrize("name", DEBLUR)
def test_built_by_name_with_the_papers_defaults(name):
    model = build(name)
    assert name in MODELS and name_of(model) == name
    assert model.config == DEFAULTS[name]
    assert json.loads(json.dumps(model.config)) == model.config  # weight files store it as JSON
    assert model.size_divisor == type(model).size_divisor == SIZE_DIVISOR[name]
    small = build(name, **SMALL[name])
    rebuilt = build(name, **small.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in small.state_dict().items()
    }


@pytest.mark.parametrize("name", DEBLUR)
def test_untrained_network_is_the_identity(name):
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(build(name)(x), x)


@pytest.mark.parametrize("name", DEBLUR)
@pytest.mark.parametrize("size", [(37, 53), (1, 1), (2, 7), (64, 48)])
def test_any_image_size_through_the_deblurrer(name, size):
    model = perturbed(build(name, **SMALL[name]))
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    out = Deblurrer({"deblur": model}, device="cpu")(image)
    assert out.shape == image.shape and out.dtype == np.uint8


@pytest.mark.parametrize("name", DEBLUR)
def test_refuses_inputs_it_cannot_take_with_a_clear_error(name):
    model = build(name, **SMALL[name])
    d = model.size_divisor
    with pytest.raises(InputError, match=f"multiples of {d}"):
        model(torch.rand(1, 3, 2 * d, 2 * d + 2))
    with pytest.raises(InputError, match="N×3×H×W"):
        model(torch.rand(1, 1, 2 * d, 2 * d))


@pytest.mark.parametrize("name", DEBLUR)
def test_forward_and_backward_in_eager_mode(name):
    model = perturbed(build(name, **SMALL[name])).train()
    x = torch.rand(2, 3, 64, 64)
    y = model(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    F.l1_loss(y, torch.rand_like(x)).backward()
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
        assert p.grad.abs().sum() > 0, key


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", DEBLUR)
def test_forward_and_backward_under_torch_compile_match_eager(name):
    torch._dynamo.reset()
    eager = perturbed(build(name, **COMPILE[name])).train()
    compiled = copy.deepcopy(eager)
    x, target = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    losses = []
    for model in (eager, torch.compile(compiled, fullgraph=True)):
        y = model(x)
        assert y.shape == x.shape
        loss = F.l1_loss(y, target)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for (key, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", DEBLUR)
def test_zero_initialised_outputs_still_train_every_layer(name):
    # Untrained, only the output conv gets a gradient; once it is non-zero the layers before it
    # do. DHN's earlier levels have zero-initialised output convs of their own, which the second
    # step wakes up (their residuals reach the last level), so after three steps every layer
    # of every network trains.
    model = build(name, **SMALL[name])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    for _ in range(3):
        opt.zero_grad()
        F.l1_loss(model(x), y).backward()
        opt.step()
    for key, p in model.named_parameters():
        if key.endswith("weight"):
            assert p.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", DEBLUR)
def test_weight_file_round_trip(name, tmp_path):
    md = perturbed(build(name, **SMALL[name]))
    mr = perturbed(build("reblur", n_blocks=1, width=8), seed=1)
    path = save_weights(tmp_path / f"{name}.safetensors", {"deblur": md, "reblur": mr})
    loaded = load_weights(path)
    assert type(loaded.deblur) is type(md) and loaded.deblur.config == md.config
    assert loaded.metadata["modules"]["deblur"] == {"arch": name, "config": md.config}
    assert loaded.metadata["size_divisor"] == SIZE_DIVISOR[name]
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.deblur(x), md(x))
    out = Deblurrer(loaded, device="cpu")(torch.rand(1, 3, 21, 30))
    assert out.shape == (1, 3, 21, 30)


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("srn", {"widths": (8, 8)}, "three positive widths"),
        ("srn", {"n_blocks": -1}, "n_blocks ≥ 0"),
        ("srn", {"n_scales": 2}, "invalid config"),
        ("dhn", {"widths": (8, 0, 8)}, "three positive widths"),
        ("dhn", {"n_levels": 0}, "n_levels ≥ 1"),
        ("dhn", {"patches": 8}, "invalid config"),
    ],
)
def test_bad_configs_are_config_errors(name, config, match):
    with pytest.raises(ConfigError, match=match):
        build(name, **config)


# ---- SRN and DHN specifics --------------------------------------------------------------------


def test_srn_exposes_every_scale_coarse_to_fine():
    model = perturbed(build("srn", **SMALL["srn"]))
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        scales = model.forward_scales(x)
        assert [tuple(s.shape[-2:]) for s in scales] == [(8, 12), (16, 24), (32, 48)]
        assert torch.equal(scales[-1], model(x))
        untrained = build("srn", **SMALL["srn"]).forward_scales(x)
    # untrained, every scale returns its blurry input: the area-averaged pyramid
    for got, factor in zip(untrained, (4, 2, 1), strict=True):
        torch.testing.assert_close(got, F.avg_pool2d(x, factor))


def test_srn_finer_scale_takes_the_upsampled_coarser_prediction_without_its_gradient():
    model = perturbed(build("srn", **SMALL["srn"]))
    x = torch.rand(1, 3, 32, 32)
    _, mid, fine = model.forward_scales(x)
    up = F.interpolate(mid.detach(), scale_factor=2, mode="bilinear", align_corners=False)
    by_hand = model._scale(x, up)
    torch.testing.assert_close(fine, by_hand, rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.equal(model._scale(x, x), fine)  # the coarser prediction matters
    # a loss on the finest scale trains the shared weights through the finest pass only
    params = list(model.parameters())
    torch.testing.assert_close(
        torch.autograd.grad(fine.sum(), params), torch.autograd.grad(by_hand.sum(), params)
    )


def test_dhn_levels_form_a_hierarchy():
    model = perturbed(build("dhn", **SMALL["dhn"]))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        # recompute the hierarchy by hand: features accumulate, each level's input is B + residual
        y, features = x, 0
        for encoder, decoder in zip(model.encoders, model.decoders, strict=True):
            features = encoder(y) + features
            y = x + decoder(features)
        torch.testing.assert_close(model(x), y, rtol=0, atol=0)
        # and every level matters
        model.encoders[0][0].weight.mul_(2)
        assert not torch.equal(model(x), y)
    assert model.tail is model.decoders[-1][-1]


@pytest.mark.parametrize("kernel", [3, 4, 5])
def test_up_conv_exactly_doubles_for_odd_and_even_kernels(kernel):
    assert up_conv(2, 3, kernel)(torch.rand(1, 2, 5, 7)).shape == (1, 3, 10, 14)


# ---- the README's model table ------------------------------------------------------------------


def gflops_per_megapixel(model: nn.Module) -> float:
    """Convolution FLOPs (2 per multiply-add) per 10⁶ pixels; they are exactly linear in H×W.

    Counted on the meta device: FlopCounterMode needs only the shapes.
    """
    h = w = 64
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, h, w, device="meta"))
    return counter.get_total_flops() / (h * w) * 1e6 / 1e9


def test_readme_model_table_matches_the_networks():
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Models\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `"):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(MODELS)
    for name, cells in rows.items():
        with torch.device("meta"):
            model = build(name)
        params, gflops, divisor = (re.sub(r"[,\s]", "", c) for c in cells[-3:])
        assert int(params) == n_params(model), name
        assert float(gflops) == pytest.approx(gflops_per_megapixel(model), abs=0.06), name
        assert int(divisor) == model.size_divisor, name
