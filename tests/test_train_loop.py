"""The training loop, in-process, on real GOPRO crops: losses, gradients, resume, AMP, ablations."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reblur_deploy import ConfigError, DependencyError, WeightsError, load_weights, losses
from reblur_deploy.models import build
from reblur_deploy.train import checkpoint as ckpt
from reblur_deploy.train.ablation import (
    PatchDiscriminator,
    PerceptualLoss,
    VGG19Features,
    vgg19_layer_names,
)
from reblur_deploy.train.config import TrainConfig
from reblur_deploy.train.data import decode, load_source, to_float, to_tensor
from reblur_deploy.train.figures import mr_report
from reblur_deploy.train.loop import Trainer, lr_at, milestones, train
from reblur_deploy.train.objective import (
    DeblurOutputs,
    deblur_loss,
    pseudo_sharp,
    reblur_module_loss,
)

from .test_train_data import write_gopro_crops

SMALL = {"widths": [8, 12, 16], "n_blocks": 1}


def config(pairs, tmp_path, **overrides) -> TrainConfig:
    values = {
        "data": [f"paired:{pairs}"],
        "md_config": SMALL,
        "mr_blocks": 1,
        "mr_width": 8,
        "crop": 64,
        "batch_size": 2,
        "iters": 6,
        "out": str(tmp_path / "run"),
        "progress": False,
        "device": "cpu",
        "tensorboard": "off",
        **overrides,
    }
    return TrainConfig.from_dict(values)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks; see conftest


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, data_dir):
    return write_gopro_crops(tmp_path_factory.mktemp("gopro"), data_dir)


@pytest.fixture(scope="module")
def batch(pairs):
    """A fixed batch of two real 64×64 blurry/sharp crops."""
    items = load_source(f"paired:{pairs}").items[:2]
    blurry = [to_tensor(to_float(decode(i.blur)[:64, 40:104])) for i in items]
    sharp = [to_tensor(to_float(decode(i.sharp)[:64, 40:104])) for i in items]
    return torch.stack(blurry), torch.stack(sharp)


def test_the_losses_fall_on_a_fixed_batch(pairs, tmp_path, batch):
    trainer = Trainer(config(pairs, tmp_path, lr=1e-3))
    history = [trainer.step(*batch) for _ in range(40)]  # deblurring is hard: it falls slowly

    def late(key):
        return sum(float(h[key]) for h in history[-5:]) / 5

    assert late("l1") < 0.98 * float(history[0]["l1"])
    assert late("loss_md") < 0.98 * float(history[0]["loss_md"])
    assert float(history[0]["loss_mr"]) == 0  # MR starts as the identity and MD(B) = B
    assert all(torch.isfinite(v) for v in history[-1].values())


def test_gradients_flow_as_the_paper_says(batch):
    torch.manual_seed(0)
    md, mr = build("unet", **SMALL), build("reblur", n_blocks=1, width=8)
    for module in (md, mr):  # leave the identity so every term has a gradient
        torch.nn.init.normal_(module.tail.weight, std=0.02)
    blurry, sharp = batch
    loss_d, parts, deblurred = deblur_loss(DeblurOutputs(md), blurry, sharp, mr=mr, lam=1.0)
    assert set(parts) == {"l1", "reblur", "loss_md"}
    loss_d.backward()
    assert all(p.grad is None for p in mr.parameters())  # L_D does not train MR
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in md.parameters())
    assert all(p.requires_grad for p in mr.parameters())  # unfrozen after the MD step
    md.zero_grad(set_to_none=True)
    pseudo = pseudo_sharp(md, sharp)
    assert not pseudo.requires_grad and pseudo.grad_fn is None  # Ŝ is detached
    loss_r, parts_r = reblur_module_loss(mr, deblurred, blurry, pseudo)
    loss_r.backward()
    assert all(p.grad is None for p in md.parameters())  # L_R does not train MD
    assert all(p.grad is not None for p in mr.parameters())
    # one forward pass over [L; Ŝ] is the library's blur_loss + sharp_loss
    with torch.no_grad():
        expected = losses.blur_loss(mr, deblurred, blurry) + losses.sharp_loss(mr, pseudo)
    assert float(loss_r.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(parts_r["blur"] + parts_r["sharp"]) == pytest.approx(float(expected), rel=1e-5)


def test_srn_uses_the_multiscale_l1(batch):
    srn = build("srn", widths=(8, 8, 8), n_blocks=1)
    torch.nn.init.normal_(srn.tail.weight, std=0.02)
    blurry, sharp = batch
    loss, parts, deblurred = deblur_loss(DeblurOutputs(srn), blurry, sharp)
    scales = srn.forward_scales(blurry)
    expected = (
        sum(
            losses.l1(out, torch.nn.functional.avg_pool2d(sharp, f) if f > 1 else sharp)
            for out, f in zip(scales, (4, 2, 1), strict=True)
        )
        / 3
    )
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    assert torch.equal(deblurred, scales[-1]) and "reblur" not in parts


def test_each_validation_reports_the_three_mr_figures_against_their_bars():
    assert mr_report({"psnr": 30.0}) is None  # no MR
    useful = {"mr_gain": 1.4, "mr_ranked": 1.0, "mr_ratio": 2.5, "mr_sharp_psnr": 41.0}
    line = mr_report(useful)
    assert "+1.40 dB" in line and "100 %" in line and "2.50x" in line and "41.0 dB" in line
    assert line.endswith(": useful")
    identity_like = {"mr_gain": 0.0, "mr_ranked": 0.43, "mr_ratio": 1.05, "mr_sharp_psnr": 99.0}
    assert "not yet useful (mr_gain, mr_ranked, mr_ratio below the bar)" in mr_report(identity_like)
    assert "(mr_ratio below" in mr_report({**useful, "mr_ratio": 1.9})


def test_learning_rate_halves_at_50_75_and_90_percent():
    assert milestones(100) == [50, 75, 90]
    rates = [lr_at(i, 100, 1e-4) for i in (0, 49, 50, 74, 75, 89, 90, 99)]
    assert rates == [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 2.5e-5, 1.25e-5, 1.25e-5]


class Killed(Exception):
    pass


def _kill_at(n):
    def hook(iteration):
        if iteration == n:
            raise Killed

    return hook


def test_a_killed_and_resumed_run_ends_with_the_same_weights(pairs, tmp_path):
    data = [f"paired:{pairs}", "synthetic:skimage@0.5"]  # mixed, with synthetic blur
    common = {
        "data": data,
        "iters": 6,
        "checkpoint_every": 3,
        "keep_checkpoints": 1,
        "log_every": 1,
    }
    straight = train(config(pairs, tmp_path / "a", **common))
    with pytest.raises(Killed):  # dies at iteration 5, after the checkpoint of iteration 3
        train(config(pairs, tmp_path / "b", **common), on_iteration=_kill_at(5))
    assert [i for i, _ in ckpt.list_checkpoints(tmp_path / "b" / "run")] == [3]
    torch.manual_seed(1234)  # the resumed run must not depend on the state of this process
    resumed = train(config(pairs, tmp_path / "b", resume="auto", **common))
    a, _ = ckpt.load(ckpt.checkpoint_path(straight.out, 6))
    b, state = ckpt.load(ckpt.checkpoint_path(resumed.out, 6))
    assert a.keys() == b.keys() and any(k.startswith("opt_mr.state.") for k in a)
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert diff <= 1e-6
    assert state["iteration"] == 6 and state["schedule"]["milestones"] == [3, 4, 5]
    wa, wb = load_file(straight.weights), load_file(resumed.weights)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6
    lines = [json.loads(line) for line in (resumed.out / "metrics.jsonl").read_text().splitlines()]
    assert [line["iter"] for line in lines] == list(range(1, 7))  # the killed run's 4, 5 dropped


def test_a_run_split_into_sessions_by_stop_at_and_stop_after_matches_one_run(pairs, tmp_path):
    """A campaign's sessions: each stops early with a checkpoint, the next resumes it."""
    common = {"iters": 6, "checkpoint_every": 3, "keep_checkpoints": 1, "log_every": 1}
    straight = train(config(pairs, tmp_path / "a", **common))
    first = train(config(pairs, tmp_path / "b", stop_at=4, **common))
    assert first.stopped_at == 4 and first.iterations == 6  # the run's length is unchanged
    assert [i for i, _ in ckpt.list_checkpoints(first.out)] == [4]
    # a deadline already past when training starts: stops after the first iteration
    second = train(config(pairs, tmp_path / "b", resume="auto", stop_after=1e-6, **common))
    assert second.stopped_at == 5
    last = train(config(pairs, tmp_path / "b", resume="auto", **common))
    assert last.stopped_at is None
    a, _ = ckpt.load(ckpt.checkpoint_path(straight.out, 6))
    b, state = ckpt.load(ckpt.checkpoint_path(last.out, 6))
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6
    assert state["schedule"]["milestones"] == [3, 4, 5]


def test_checkpoints_are_safetensors_with_a_json_state_never_pickles(pairs, tmp_path):
    result = train(config(pairs, tmp_path, iters=2, amp="fp16", val=["names:461"], val_crop=64))
    path = ckpt.checkpoint_path(result.out, 2)
    header = path.read_bytes()[:9]
    assert header[8:9] == b"{"  # a safetensors header, not a zip/pickle
    state = ckpt.read_state(path)
    assert state["scaler"]["scale"] > 0 and len(state["rng"]) == 1
    assert state["config"]["amp"] == "fp16" and state["best"]["iteration"] == 2
    assert {"psnr", "ssim", "blur_output", "blur_sharp", "blur_input"} <= set(result.metrics)
    weights = load_weights(result.weights)
    provenance = weights.metadata["provenance"]
    assert provenance["iterations"] == 2 and provenance["data"]["val_items"] == ["461_blur.png"]
    assert provenance["metrics"]["psnr"] == pytest.approx(result.metrics["psnr"])
    assert weights.reblur is not None and result.best is not None
    pickled = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, pickled)
    with pytest.raises(WeightsError):
        ckpt.load(pickled)
    with pytest.raises(Exception, match="already holds a training run"):
        Trainer(config(pairs, tmp_path, iters=2))


def test_init_fine_tunes_from_a_weight_file_and_keeps_its_provenance(pairs, tmp_path):
    stage1 = train(config(pairs, tmp_path / "1", mode="baseline", iters=2))
    stage2 = Trainer(config(pairs, tmp_path / "2", init=str(stage1.weights), iters=2))
    first = load_weights(stage1.weights).deblur.state_dict()
    assert all(torch.equal(v, stage2.nets.md.state_dict()[k]) for k, v in first.items())
    assert stage2.nets.mr is not None  # the L1 file has no MR: MR starts fresh
    source = stage2.saver.provenance(0, {}, stage2.total)["init"]
    assert source["weights"] == str(stage1.weights) and len(source["sha256"]) == 64
    assert source["provenance"]["config"]["mode"] == "baseline"
    wider = config(
        pairs, tmp_path / "3", init=str(stage1.weights), md_config={**SMALL, "n_blocks": 2}
    )
    with pytest.raises(ConfigError, match="differs from this run's"):
        Trainer(wider)


def test_bf16_autocast_and_baseline_mode(pairs, tmp_path, batch):
    trainer = Trainer(config(pairs, tmp_path, amp="bf16", mode="baseline"))
    parts = trainer.step(*batch)
    assert set(parts) == {"l1", "loss_md"} and trainer.nets.mr is None
    assert all(p.dtype == torch.float32 for p in trainer.nets.md.parameters())


def test_perceptual_and_adversarial_ablations(pairs, tmp_path, batch):
    names = vgg19_layer_names()
    assert names[:4] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2"] and names[-1] == "pool5"
    assert len(names) == 37  # torchvision's vgg19().features has 37 modules
    torch.manual_seed(0)
    full = VGG19Features("relu2_2")
    state = {f"features.{k}": v for k, v in full.features.state_dict().items()}
    save_file(state, tmp_path / "vgg.safetensors")
    torch.save(state, tmp_path / "vgg.pth")  # the torchvision format, read with weights_only
    for path in ("vgg.safetensors", "vgg.pth"):
        loss = PerceptualLoss(tmp_path / path, "relu2_2")
        assert torch.equal(loss.vgg.features[0].weight, full.features[0].weight)
    with pytest.raises(WeightsError, match="missing"):
        PerceptualLoss(tmp_path / "vgg.pth", "relu5_4")
    assert PatchDiscriminator()(batch[0]).shape == (2, 1, 6, 6)  # 70×70 patches of a 64 crop
    ablation = {"perceptual": 0.1, "perceptual_layer": "relu2_2", "adversarial": 0.01}
    cfg = config(pairs, tmp_path, vgg_weights=str(tmp_path / "vgg.pth"), iters=2, **ablation)
    result = train(cfg)
    tensors, state = ckpt.load(ckpt.checkpoint_path(result.out, 2))
    assert any(k.startswith("disc.") for k in tensors) and "opt_disc" in state["optimizers"]
    lines = (result.out / "metrics.jsonl").read_text().splitlines()
    assert {"perceptual", "adversarial", "disc"} <= set(json.loads(lines[-1]))


def test_loader_workers_do_not_change_the_data_stream_and_epochs_set_the_length(pairs, tmp_path):
    common = {"iters": 3, "data": [f"paired:{pairs}", "synthetic:skimage@1"]}
    inline = train(config(pairs, tmp_path / "w0", workers=0, **common))
    forked = train(config(pairs, tmp_path / "w2", workers=2, **common))
    a, b = load_file(inline.weights), load_file(forked.weights)
    assert all(torch.equal(a[k], b[k]) for k in a)
    by_epochs = Trainer(config(pairs, tmp_path / "e", iters=None, epochs=2, batch_size=4))
    assert by_epochs.total == 4  # 2 epochs of the 7 pairs, 4 a batch: ceil(14 / 4)


def test_tensorboard_on_without_the_package_is_a_clear_error(pairs, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed here")
    with pytest.raises(DependencyError, match="pip install tensorboard"):
        train(config(pairs, tmp_path, iters=1, tensorboard="on"))
    train(config(pairs, tmp_path / "auto", iters=1, tensorboard="auto"))  # auto: no logs


def test_mode_mr_trains_mr_alone_on_lengthened_blur_and_reports_its_figures(pairs, tmp_path):
    first = train(config(pairs, tmp_path / "a", iters=2, mode="baseline"))
    settings = {"mode": "mr", "init": str(first.weights), "lr": 1e-3, "val_crop": 64}
    result = train(config(pairs, tmp_path / "b", iters=8, val=["names:461"], **settings))
    before, after = load_weights(first.weights), load_weights(result.weights)
    for key, value in before.deblur.state_dict().items():  # MD is frozen
        assert torch.equal(value, after.deblur.state_dict()[key])
    assert after.reblur is not None
    assert {"mr_gain", "mr_ranked", "mr_ratio", "mr_sharp_psnr"} <= set(result.metrics)
    lines = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    losses_seen = [line["mr_syn"] for line in lines if "mr_syn" in line]
    assert losses_seen and all(np.isfinite(losses_seen))
    assert after.metadata["provenance"]["config"]["mode"] == "mr"


def test_minutes_fix_the_run_length_from_the_measured_rate(pairs, tmp_path):
    start = time.perf_counter()
    result = train(config(pairs, tmp_path, iters=None, minutes=0.05, crop=32, log_every=5))
    seconds = time.perf_counter() - start
    assert result.iterations >= 20  # the calibration iterations always run
    assert seconds < 3 * 60 * 0.05 + 30  # about the budget (plus start-up and saving)
    state = ckpt.read_state(ckpt.checkpoint_path(result.out, result.iterations))
    assert state["total_iterations"] == result.iterations
    assert state["schedule"]["milestones"] == milestones(result.iterations)
    with pytest.raises(ConfigError, match="exactly one of --iters, --epochs, --minutes"):
        config(pairs, tmp_path, iters=5, minutes=1.0)
