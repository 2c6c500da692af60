import dataclasses
import warnings

import numpy as np
import pytest
import torch

from reblur_deploy import ConfigError, Deblurrer, blur_score, losses
from reblur_deploy.bench.drift import play_order
from reblur_deploy.device import memory_format
from reblur_deploy.histmatch import TOLERANCE, match_histograms
from reblur_deploy.io import read_image
from reblur_deploy.metrics import psnr
from reblur_deploy.models import build
from reblur_deploy.tta import (
    PAPER_LR,
    TestTimeAdapter,
    TTAConfig,
    TTAResult,
    TTAStats,
    adapt,
    histogram_distance,
)

from .conftest import randomized


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def frame(data_dir):
    return as_tensor(read_image(data_dir / "gopro" / "blur" / "blur_00.png")[300:364, 500:580])


@pytest.fixture
def md():
    """In the CPU's memory format, as the adapter runs it: outputs made here then match the
    adapter's bit for bit."""
    module = randomized(build("unet", widths=(8, 12, 16), n_blocks=1))
    return module.to(memory_format=memory_format(torch.device("cpu")))


@pytest.fixture
def mr():
    return randomized(build("reblur", n_blocks=1, width=8), seed=1)


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same_weights(module, saved):
    return all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("size", [None, (1080, 1920)], ids=["crop", "1080p"])
def test_algorithm_a_lowers_the_self_supervised_loss(frame, md, mr, size):
    """Five steps lower |MR(MD(B)) − L*| with the target L* = L0 held, the objective Algorithm A
    descends. (Recomputing L* from the adapted output moves the target too; with a random MR,
    which has not learnt to leave sharp images alone, that loss may go either way.) MR judges
    the outputs shrunk by the scale of the frame's size: 2 for a crop, 3 at 1080p."""
    if size is not None:
        frame = torch.nn.functional.interpolate(frame, size=size, mode="bilinear")
    config = TTAConfig(steps=5, carry=0)  # carry: the adapter keeps the adapted weights
    scale = config.scale_for(*frame.shape[-2:])
    assert config.scale is None and scale == (2 if size is None else 3)
    with torch.no_grad():
        initial = losses.shrink(md(frame), scale)
        before = losses.l1(mr(initial), initial).item()
    stats = TestTimeAdapter(md, mr, config)(frame).stats
    with torch.no_grad():
        after = losses.l1(mr(losses.shrink(md(frame), scale)), initial).item()
    assert stats.steps == [5]
    assert stats.losses[0][0] == pytest.approx(before, rel=1e-5)
    assert after < (1 - 1e-3) * before  # far beyond float32 noise


def test_weights_are_restored_bit_exactly_and_mr_stays_frozen(frame, md, mr):
    md_saved, mr_saved = snapshot(md), snapshot(mr)
    out = adapt(frame, md, mr, steps=5)
    assert same_weights(md, md_saved) and same_weights(mr, mr_saved)
    assert all(p.requires_grad for p in mr.parameters())
    assert all(p.grad is None for p in mr.parameters())
    assert out.shape == frame.shape and torch.isfinite(out).all()


@pytest.mark.slow
def test_output_has_the_histogram_of_the_initial_output(frame, md, mr):
    with torch.no_grad():
        initial = md(frame).clamp(0, 1)
    exact = adapt(frame, md, mr, steps=5, lr=1e-3, histmatch="exact")  # a visible change
    assert not torch.equal(exact, initial)
    # Exact matching: the same values per channel, up to the few ties in the adapted output
    # that quantile mapping resolves by interpolation.
    sorted_exact, sorted_initial = exact.flatten(2).sort().values, initial.flatten(2).sort().values
    assert (sorted_exact == sorted_initial).float().mean() > 0.99
    # The default, binned matching: within half an 8-bit level of the exact one.
    fast = adapt(frame, md, mr, steps=5, lr=1e-3)
    assert (fast - exact).abs().max() <= TOLERANCE + 1e-6


@pytest.mark.slow
def test_batch_images_are_adapted_independently(frame, md, mr):
    other = frame.flip(-1)
    batch = adapt(torch.cat([frame, other]), md, mr, steps=2, lr=1e-4)
    torch.testing.assert_close(batch[:1], adapt(frame, md, mr, steps=2, lr=1e-4))
    torch.testing.assert_close(batch[1:], adapt(other, md, mr, steps=2, lr=1e-4))
    joint = TestTimeAdapter(md, mr, TTAConfig(steps=2, lr=1e-4, joint=True))
    result = joint(torch.cat([frame, other]))
    assert result.image.shape == (2, 3, 64, 80) and result.stats.steps == [2]


def test_the_config_is_frozen_and_per_call_values_are_arguments(frame, md, mr):
    config = TTAConfig(steps=3, lr=1e-3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.crop = 32  # type: ignore[misc]
    adapter = TestTimeAdapter(md, mr, config)
    seen = []
    hook = md.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    result = adapter(frame, steps=1, crop=32)
    hook.remove()
    assert isinstance(result, TTAResult) and result.image.shape == frame.shape
    assert result.stats == TTAStats(steps=[1], losses=result.stats.losses)
    assert (4, 3, 32, 32) in seen  # this call's crop
    assert adapter.config is config and adapter(frame).stats.steps == [3]  # then the config's


def test_crop_tta_adapts_on_crops_and_infers_the_whole_frame(frame, md, mr):
    saved = snapshot(md)
    adapter = TestTimeAdapter(md, mr, TTAConfig(steps=3, crop=32, crops=2, lr=1e-3))
    seen = []
    hook = md.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    out = adapter(frame[..., :63, :77]).image  # odd sizes are padded to the divisor
    hook.remove()
    assert out.shape == (1, 3, 63, 77)
    assert seen == [(1, 3, 64, 80)] + [(2, 3, 32, 32)] * 3 + [(1, 3, 64, 80)]
    assert same_weights(md, saved)


def test_early_stop(frame, md, mr):
    adapter = TestTimeAdapter(md, mr, TTAConfig(steps=10, tol=1.0))  # any gain is "too small"
    assert adapter(frame).stats.steps == [2]
    adapter = TestTimeAdapter(md, mr, TTAConfig(steps=4, tol=0.0))
    assert len(adapter(frame).stats.losses[0]) in range(2, 5)


def test_scene_cut_threshold_on_real_frames(data_dir):
    clip = sorted((data_dir / "gopro_clip_noGT").glob("*.png"))
    a, b = (as_tensor(read_image(p))[0] for p in clip[:2])
    other = as_tensor(read_image(data_dir / "gopro" / "blur" / "461_blur.png"))[0]
    assert histogram_distance(a, a) == 0
    assert histogram_distance(a, b) < 0.1 < 0.3 < histogram_distance(a, other)


def test_carry_over_keeps_weights_within_a_shot_and_resets_at_a_cut(frame, md, mr):
    saved = snapshot(md)
    adapter = TestTimeAdapter(md, mr, TTAConfig(steps=3, carry=1, lr=1e-4))
    shot = [frame, frame.roll(1, -1), frame.roll(2, -1)]
    for x in shot:
        adapter(x)
    assert not same_weights(md, saved)  # carried, not restored
    cut = 1 - frame  # a synthetic cut: the negative of the frame
    results = [adapter(x) for x in [*shot[:1], cut]]
    assert results[-1].stats.scene_cuts == 1 and results[-1].stats.steps == [3]
    adapter.reset()
    assert same_weights(md, saved)
    fresh = TestTimeAdapter(md, mr, TTAConfig(steps=3, carry=1, lr=1e-4))
    # After a cut: as if the video started there.
    torch.testing.assert_close(results[-1].image, fresh(cut).image)


def test_carry_over_costs_carry_steps_per_frame(frame, md, mr):
    adapter = TestTimeAdapter(md, mr, TTAConfig(steps=3, carry=1))
    history = []
    for shift in range(3):
        history += adapter(frame.roll(shift, -1)).stats.steps
    assert history == [3, 1, 1]


class CountedPasses:
    """MD's whole-frame passes (L0, LN) as TestTimeAdapter makes them, each output kept."""

    def __init__(self, md):
        self.md, self.outputs = md, []

    def __call__(self, x):
        self.outputs.append(self.md(x).float())
        return self.outputs[-1]


@pytest.mark.parametrize("match_carried", [True, False])
def test_carried_frames_match_to_their_own_l0_only_when_asked(frame, md, mr, match_carried):
    """In crop mode L0 is a whole-frame pass of its own. A shot's first frame always makes it
    and matches LN to it; a carried frame only with ``match_carried``, else its output is LN
    as it is, for one pass instead of two."""
    passes = CountedPasses(md)
    config = TTAConfig(steps=2, carry=1, crop=32, crops=2, lr=1e-3, match_carried=match_carried)
    adapter = TestTimeAdapter(md, mr, config, full_forward=passes)
    for shift in range(3):
        before = len(passes.outputs)
        result = adapter(frame.roll(shift, -1))
        out = result.image
        made = passes.outputs[before:]
        assert len(made) == (2 if shift == 0 or match_carried else 1)
        if len(made) == 2:
            l0, ln = made
            assert not torch.equal(l0, ln)  # the steps changed the output
            torch.testing.assert_close(out, match_histograms(ln, l0).clamp(0, 1))
        else:
            assert torch.equal(out, made[0].clamp(0, 1))
    assert result.stats.steps == [1]


def test_a_failed_carried_frame_without_l0_returns_the_original_output(frame, md, mr):
    """A carried frame that makes no L0 (``match_carried=False``) and whose step fails falls
    back to the original weights' output, with the warning, and the weights are reset."""
    saved = snapshot(md)
    with torch.no_grad():
        original = md(frame).clamp(0, 1)
    config = TTAConfig(steps=2, carry=1, crop=32, crops=2, lr=1e-3, match_carried=False)
    adapter = TestTimeAdapter(md, mr, config)
    adapter(frame)
    assert not same_weights(md, saved)
    with torch.no_grad():
        mr.tail.bias[0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        result = adapter(frame)
    assert result.stats.fell_back
    assert torch.equal(result.image, original) and same_weights(md, saved)


def test_nan_guard_returns_the_initial_output(frame, md, mr):
    with torch.no_grad():
        initial = md(frame).clamp(0, 1)
        mr.tail.bias[0] = float("nan")
    saved = snapshot(md)
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        out = adapt(frame, md, mr, steps=5)
    assert torch.equal(out, initial) and same_weights(md, saved)


def test_deblurrer_runs_tta_and_leaves_the_weights_alone(frame, md, mr):
    saved = snapshot(md)
    image = (frame[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    plain = Deblurrer({"deblur": md, "reblur": mr}, device="cpu")(image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = TTAConfig(steps=3, lr=1e-3)
        adapted = Deblurrer({"deblur": md, "reblur": mr}, device="cpu", tta=config)(image)
    assert adapted.shape == image.shape and adapted.dtype == np.uint8
    assert not np.array_equal(adapted, plain)
    assert same_weights(md, saved)


def test_bf16_autocast_keeps_fp32_weights(frame, md, mr):
    out = adapt(frame, md, mr, steps=2, amp_dtype=torch.bfloat16)
    assert out.dtype == torch.float32 and md.head.weight.dtype == torch.float32


def test_blur_score_is_the_per_image_self_supervised_loss(frame, mr):
    batch = torch.cat([frame, frame.flip(-2)])
    scores = blur_score(batch, mr)
    assert scores.shape == (2,) and (scores > 0).all()
    with torch.no_grad():
        assert scores[0] == pytest.approx(losses.self_supervised_loss(mr, frame).item(), rel=1e-5)
    assert blur_score(batch, build("reblur")).abs().max() == 0  # an identity MR sees no blur


@pytest.mark.slow
def test_mr_judges_a_larger_frame_shrunk_more_and_then_ranks_its_blur(data_dir):
    """The same motion blurs a 4K frame over three times the pixels of a 720p one: shrunk ×2
    (720p's scale) the bundled MR scores a real 4K copy of a GOPRO pair's sharp frame blurrier
    than its blurry one (on all 7 pairs, docs/TTA.md); shrunk as ``blur_scale`` says (×6), the
    blurry frame scores several times the sharp one, as the 720p pair does at ×2."""
    assert [losses.blur_scale(h, w) for h, w in ((270, 480), (720, 1280), (1080, 1920),
            (1920, 1080), (2160, 3840), (20000, 20000))] == [2, 2, 3, 3, 6, 56]  # fmt: skip
    assert TTAConfig(scale=1).scale_for(2160, 3840) == 1  # a given scale wins
    mr = Deblurrer("unet-lite", device="cpu").reblur
    pair = [read_image(data_dir / "gopro" / kind / "blur_00.png".replace("blur", kind))
            for kind in ("blur", "sharp")]  # fmt: skip
    blurry, sharp = (torch.nn.functional.interpolate(as_tensor(x), size=(2160, 3840),
                     mode="bicubic").clamp(0, 1) for x in pair)  # fmt: skip
    assert blur_score(blurry, mr, 2) < blur_score(sharp, mr, 2)
    assert blur_score(blurry, mr) > 4 * blur_score(sharp, mr)
    native = [blur_score(x, mr) for x in pair]  # 720p: ×2
    assert native[0] > 4 * native[1]


def test_every_tta_field_is_one_option_with_its_name_in_both_commands():
    """--tta-NAME ↔ TTAConfig.NAME, the same in reblur-run and reblur-eval, defaults included."""
    import dataclasses

    from reblur_deploy.cli import eval as eval_cli
    from reblur_deploy.cli import run as run_cli
    from reblur_deploy.cli.common import tta_config

    fields = {f.name for f in dataclasses.fields(TTAConfig)} - {"steps", "amp_dtype"}
    for command in (run_cli.main, eval_cli.main):
        params = {p.name: p for p in command.params if p.name.startswith("tta_")}
        # --tta-video/--tta-per-frame (reblur-run): which configuration videos get;
        # --tta-sweep (reblur-eval): a row per number of steps
        extra = {"tta_steps", "tta_sweep", "tta_video"}
        assert set(params) - extra == {f"tta_{name}" for name in fields}
        for name in fields:
            assert params[f"tta_{name}"].opts == ["--tta-" + name.replace("_", "-")]
        defaults = {name: p.default for name, p in params.items()}
        assert tta_config(5, defaults) == TTAConfig(steps=5)  # the paper's Algorithm A
        assert tta_config(0, defaults) is None
        with pytest.raises(ConfigError, match="--tta-crop needs --tta N"):
            tta_config(0, {**defaults, "tta_crop": 256})
        chosen = tta_config(
            3, {**defaults, "tta_crop": 256, "tta_histmatch": "fast", "tta_match_carried": False}
        )
        assert (chosen.steps, chosen.crop, chosen.histmatch) == (3, 256, "fast")
        assert chosen.match_carried is False


def test_deblurrer_takes_one_config_and_the_steps_shorthand(md, mr):
    modules = {"deblur": md, "reblur": mr}
    config = TTAConfig(steps=2, crop=32, histmatch="fast")
    effective = Deblurrer(modules, device="cpu", tta=config).tta_config
    assert (effective.steps, effective.crop, effective.histmatch) == (2, 32, "fast")
    shorthand = Deblurrer(modules, device="cpu", tta_steps=4).tta_config
    assert shorthand == TTAConfig(steps=4, lr=PAPER_LR)  # the rate: these weights name none
    plain = Deblurrer(modules, device="cpu")
    assert plain.tta_config is None and plain.tta_stats is None
    with pytest.raises(ConfigError, match="not both"):
        Deblurrer(modules, device="cpu", tta_steps=4, tta=config)


@pytest.mark.parametrize("mode", ["carry-over", "video mode"])
def test_carried_weights_do_not_drift_on_a_long_real_clip(data_dir, mode):
    """REDS 027 (real blur; the central 160×96 of its 320×180 frames, since the drift is in the
    weights, not the pixels), 30 frames played forwards and backwards: with carry-over
    (whole-frame steps, each frame matched) and in the video mode (a step on three 64² crops,
    carried frames not matched) the frames at the end must score like per-frame Algorithm A on
    the same frames. At 3× the paper's learning rate; without the decay towards the original
    weights the weights drift linearly (48 lr by frame 60) and the last frames lose 4–7 dB
    (measured with carry-over on whole frames; on these crops 6.7 dB with carry-over, 6.2 in
    the video mode, while with the decay both end within 0.05 dB of Algorithm A)."""
    root = data_dir / "train" / "reds027_x4"
    names = sorted(p.name for p in (root / "blur").iterdir())[:30]
    blurry = [read_image(root / "blur" / n)[42:138, 80:240] for n in names]
    sharp = [read_image(root / "sharp" / n)[42:138, 80:240] for n in names]
    order = play_order(30, 60)
    algorithm_a = TTAConfig(steps=5, lr=1e-5, histmatch="fast")
    if mode == "carry-over":
        config = dataclasses.replace(algorithm_a, carry=1)
    else:
        config = dataclasses.replace(algorithm_a, crop=64, crops=3).for_video()
    carried = Deblurrer("unet-lite", device="cpu", batch_size=1, tta=config)
    outputs = [carried(blurry[i]) for i in order]
    last = range(48, 60, 3)
    per_frame = Deblurrer("unet-lite", device="cpu", tta=algorithm_a)
    reference = np.mean([psnr(per_frame(blurry[order[t]]), sharp[order[t]]) for t in last])
    drifted = np.mean([psnr(outputs[t], sharp[order[t]]) for t in last])
    assert drifted >= reference - 0.1, (drifted, reference)


def test_the_video_mode_adapts_on_the_same_share_of_every_frame_size(md, mr):
    """A fixed count of 256² crops cost 3.7× plain inference at 640×360 and covered 9 % of a
    1080p frame; the video mode covers 21 % of every frame (three crops at 720p, as measured
    in docs/TTA.md) with crops of at most 256², at least one and at most eight."""
    video = TTAConfig(steps=3).for_video()
    sizes = [(180, 320), (360, 640), (720, 1280), (1080, 1920), (2160, 3840)]
    plans = [video.crop_plan(h, w, 256) for h, w in sizes]
    assert plans == [(1, 110), (1, 220), (3, 254), (7, 249), (8, 256)]
    for (h, w), (count, side) in zip(sizes[:4], plans, strict=False):
        assert count * side**2 / (h * w) == pytest.approx(0.21, rel=0.01)
    assert TTAConfig(crop=128, crops=2).for_video().crop_plan(1080, 1920, 128) == (2, 128)
    adapter = TestTimeAdapter(md, mr, dataclasses.replace(video, crop=32))
    assert adapter._random_crops(torch.rand(1, 3, 96, 160), 32).shape == (4, 3, 28, 28)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="crop area"):
            TTAConfig(crop_area=bad)


@pytest.mark.slow
def test_video_mode_crop_steps_take_bf16_where_the_cpu_has_it_within_one_level(data_dir):
    """The video mode (carry-over, one step on crops a frame); its crop steps run under bf16
    autocast on CPUs with native bf16 (the whole-frame passes stay float32), which moves
    the output of real frames by at most one 8-bit level against float32 steps."""
    from reblur_deploy.device import native_bf16

    video = TTAConfig(steps=3).for_video()
    assert (video.carry, video.crop, video.crop_area, video.match_carried) == (1, 256, 0.21, False)
    assert TTAConfig(steps=3, carry=2, crop=128).for_video() == TTAConfig(
        steps=3, carry=2, crop=128, match_carried=False
    )
    assert TTAConfig(steps=3, match_carried=True).for_video().match_carried is True
    auto = Deblurrer("unet-lite", device="cpu", tta=video)
    expected = torch.bfloat16 if native_bf16("cpu") else None
    assert auto.tta_config.amp_dtype == expected
    assert Deblurrer("unet-lite", device="cpu", tta_steps=3).tta_config.amp_dtype is None
    fp32 = dataclasses.replace(video, amp_dtype=torch.float32)
    reference = Deblurrer("unet-lite", device="cpu", tta=fp32)
    root = data_dir / "train" / "reds027_x4" / "blur"
    for path in sorted(root.iterdir())[:4]:
        frame = read_image(path)
        a, b = auto(frame).astype(np.int16), reference(frame).astype(np.int16)
        assert np.abs(a - b).max() <= 1
    assert auto.tta_stats.steps == reference.tta_stats.steps == [1]


def test_an_interval_adapts_every_nth_carried_frame_and_runs_the_rest_as_carried(frame, md, mr):
    """interval=3: the shot's first frame takes its steps, then only every third carried frame
    takes its step; a frame between runs on the carried weights unchanged (the same output as
    plain inference with them)."""
    config = TTAConfig(steps=2, carry=1, crop=32, crops=1, lr=1e-3, interval=3)
    adapter = TestTimeAdapter(md, mr, config)
    steps = [adapter(frame).stats.steps[0] for _ in range(7)]
    assert steps == [2, 0, 0, 1, 0, 0, 1]
    carried = snapshot(md)
    out = adapter(frame)  # the 8th frame: between adaptations
    assert out.stats.steps == [0] and same_weights(md, carried)
    with torch.no_grad():
        assert torch.equal(out.image, md(frame).clamp(0, 1))
    with pytest.raises(ConfigError, match="interval"):
        TTAConfig(interval=0)


def test_an_input_adapts_the_same_whatever_came_before_it(frame, md, mr):
    """Crop TTA's random crops start again at every reset (a new input): a local run and the
    workers of a cluster, which see the inputs in other orders, give the same results."""
    adapter = TestTimeAdapter(md, mr, TTAConfig(steps=2, crop=32, crops=2, lr=1e-3))
    first = adapter(frame).image
    adapter.reset()
    adapter(frame.flip(-1))  # another input first
    adapter.reset()
    assert torch.equal(adapter(frame).image, first)
