"""The training loop of Nah et al., "Clean Images are Hard to Reblur" (ICLR 2022).

Joint mode, every iteration, on a batch of blurry B and sharp S crops:

1. Ŝ = MD(S) without gradient (MD's weights before this iteration's update);
2. MD step on L_D = L1(L, S) + λ·|MR(L) − MR(S)| with L = MD(B); MR is frozen during this
   step (its parameters do not require gradients), so L_D reaches MD only;
3. MR step on L_R = |MR(L*) − B| + |MR(Ŝ) − Ŝ| with L* = L detached (one forward pass of MR
   over [L*; Ŝ]); no gradient reaches MD.

Baseline mode is step 2 with the L1 term only. MR mode trains MR alone, MD frozen, on synthetic
pairs (T_α(S), T(S)) made from the sharp images of the data (``synthesize_reblur``): it gives
MR a sense of blur before joint training, which L_Sharp otherwise pins MR at the identity
without (docs/TRAINING.md). For SRN the L1 term is the mean over its three
scales of |Lₖ − Sₖ|, Sₖ the sharp crop average-pooled to the scale. The optional ablation terms
(VGG-19 perceptual, PatchGAN adversarial) are added to L_D; the discriminator then takes its
own step after MR's.

Adam (lr 1e-4, betas 0.9, 0.999) for each network; the learning rate is halved at 50 %, 75 %
and 90 % of the run and is a pure function of the iteration. AMP: torch.autocast in bf16, or
fp16 with one GradScaler shared by the optimizers (``update`` once per iteration).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from reblur_deploy import losses
from reblur_deploy._version import __version__
from reblur_deploy.device import autocast, frozen
from reblur_deploy.errors import ConfigError, DependencyError, InputError, ReblurError
from reblur_deploy.metrics import psnr, ssim
from reblur_deploy.models import SRN, build, name_of
from reblur_deploy.padding import pad_to_multiple
from reblur_deploy.weights import load_weights, save_weights

from . import checkpoint as ckpt
from . import ddp
from .ablation import PatchDiscriminator, PerceptualLoss, discriminator_loss, generator_loss
from .config import TrainConfig
from .data import (
    Augment,
    BatchStream,
    DataPlan,
    ImageStore,
    Item,
    MixSampler,
    TrainSet,
    ValSet,
    check_items,
    image_size,
    plan_data,
)
from .synthetic import BlurParams

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MILESTONES = (0.5, 0.75, 0.9)
CALIBRATION = 20  # --minutes: iterations timed before the run's length is fixed

# ------------------------------------------------------------------------ loss functions


class DeblurOutputs(nn.Module):
    """MD as a module returning its predictions, coarse to fine: SRN's three scales, else [L].

    This is what DDP wraps, so that SRN's multi-scale forward is synchronised like any other.
    """

    def __init__(self, md: nn.Module):
        super().__init__()
        self.md = md

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if isinstance(self.md, SRN):
            return self.md.forward_scales(x)
        return [self.md(x)]


def multiscale_l1(outputs: list[torch.Tensor], sharp: torch.Tensor) -> torch.Tensor:
    """Mean over the outputs of L1 to the sharp image average-pooled to each output's size."""
    terms = []
    for output in outputs:
        factor = sharp.shape[-1] // output.shape[-1]
        target = F.avg_pool2d(sharp, factor) if factor > 1 else sharp
        terms.append(losses.l1(output, target))
    return torch.stack(terms).mean() if len(terms) > 1 else terms[0]


def pseudo_sharp(md: nn.Module, sharp: torch.Tensor) -> torch.Tensor:
    """Ŝ = MD(S) without gradient."""
    with torch.no_grad():
        return md(sharp)


def deblur_loss(
    md_outputs: nn.Module,
    mr: nn.Module | None,
    blurry: torch.Tensor,
    sharp: torch.Tensor,
    lam: float = 1.0,
    perceptual: nn.Module | None = None,
    perceptual_weight: float = 0.0,
    disc: nn.Module | None = None,
    adversarial_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """L_D = L1 (+ λ·L_Reblur with MR frozen) (+ ablation terms); returns (L_D, parts, L)."""
    outputs = md_outputs(blurry)
    deblurred = outputs[-1]
    l1 = multiscale_l1(outputs, sharp)
    loss, parts = l1, {"l1": l1.detach()}
    with frozen(mr, disc):
        if mr is not None:
            reblur = losses.reblur_loss(mr, deblurred, sharp)
            loss = loss + lam * reblur
            parts["reblur"] = reblur.detach()
        if perceptual is not None:
            term = perceptual(deblurred, sharp)
            loss = loss + perceptual_weight * term
            parts["perceptual"] = term.detach()
        if disc is not None:
            term = generator_loss(disc(deblurred))
            loss = loss + adversarial_weight * term
            parts["adversarial"] = term.detach()
    parts["loss_md"] = loss.detach()
    return loss, parts, deblurred


def reblur_module_loss(
    mr: nn.Module, deblurred: torch.Tensor, blurry: torch.Tensor, pseudo: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_R = L_Blur + L_Sharp on L and Ŝ detached from MD."""
    l_blur, l_sharp = losses.reblur_module_losses(mr, deblurred.detach(), blurry, pseudo.detach())
    loss = l_blur + l_sharp
    return loss, {"blur": l_blur.detach(), "sharp": l_sharp.detach(), "loss_mr": loss.detach()}


# What makes MR useful (docs/TRAINING.md): it re-creates blur, and scores blurry input above
# the deblurred output above the ground truth, with a clear margin.
MR_BARS = {"mr_gain": 1.0, "mr_ranked": 0.9, "mr_ratio": 2.0}


def mr_report(metrics: dict[str, float]) -> str | None:
    """One line with MR's three validation figures and whether they meet ``MR_BARS``.

    ``mr_gain``: PSNR(MR(L), B) − PSNR(L, B) in dB, how well MR re-creates the blur left in L;
    ``mr_ranked``: the share of images whose blur scores rank blurry > deblurred > sharp;
    ``mr_ratio``: the median over images of blur score(blurry) / blur score(sharp);
    ``mr_sharp_psnr``: PSNR(MR(S), S), how little MR changes a sharp image.
    """
    if "mr_gain" not in metrics:
        return None
    missed = [key for key, bar in MR_BARS.items() if not metrics[key] >= bar]
    verdict = "useful" if not missed else f"not yet useful ({', '.join(missed)} below the bar)"
    return (
        f"MR re-creates blur {metrics['mr_gain']:+.2f} dB, ranks blurry > deblurred > sharp on "
        f"{100 * metrics['mr_ranked']:.0f} % of images, blurry/sharp score "
        f"{metrics['mr_ratio']:.2f}x, PSNR(MR(S), S) {metrics['mr_sharp_psnr']:.1f} dB: {verdict}"
    )


def mr_figures(
    mr: nn.Module, output: torch.Tensor, sharp: torch.Tensor, blurry: torch.Tensor
) -> dict[str, float]:
    """One image's MR figures (see ``mr_report``) and its three blur scores, from 1×3×H×W
    tensors in [0, 1]: the deblurred ``output`` L, the ``sharp`` S and the ``blurry`` B."""
    batch = torch.cat([output, sharp, blurry])
    scores = dict(zip(("blur_output", "blur_sharp", "blur_input"),
                      losses.blur_score(batch, mr).tolist(), strict=True))  # fmt: skip
    with torch.no_grad():
        reblurred = mr(torch.cat([output, sharp])).float().clamp(0, 1)
    out8, gt8, in8 = _to_u8(output), _to_u8(sharp), _to_u8(blurry)

    def capped_psnr(a: np.ndarray, b: np.ndarray) -> float:  # equal images: 99 dB, not inf
        return min(psnr(a, b), 99.0)

    b_in, b_out, b_gt = scores["blur_input"], scores["blur_output"], scores["blur_sharp"]
    return {
        **scores,
        "mr_gain": capped_psnr(_to_u8(reblurred[:1]), in8) - capped_psnr(out8, in8),
        "mr_sharp_psnr": capped_psnr(_to_u8(reblurred[1:]), gt8),
        "mr_ranked": float(b_in > b_out > b_gt),
        "mr_ratio": b_in / max(b_gt, 1e-12),
    }


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each figure over images; ``mr_ratio``'s median (a ratio's mean is ruled by
    its largest values)."""
    metrics = {k: float(np.mean([row[k] for row in rows])) for k in rows[0] if k != "name"}
    if "mr_ratio" in metrics:
        metrics["mr_ratio"] = float(np.median([row["mr_ratio"] for row in rows]))
    return metrics


def milestones(total: int) -> list[int]:
    """Iterations from which the learning rate is halved once more (50 %, 75 %, 90 %)."""
    return [int(p * total) for p in MILESTONES]


def lr_at(iteration: int, total: int, base: float) -> float:
    """The learning rate of the update made at 0-based ``iteration`` of a ``total``-long run."""
    return base * 0.5 ** sum(iteration >= m for m in milestones(total))


# ----------------------------------------------------------------------------- trainer


@dataclass
class Result:
    """What ``train`` returns: the run folder, its weight files and final figures."""

    out: Path
    weights: Path
    best: Path | None
    iterations: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe: non-finite floats become strings."""
    return {
        k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
        for k, v in values.items()
    }


def _to_u8(image: torch.Tensor) -> np.ndarray:
    array = image[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return np.rint(array * 255.0).astype(np.uint8)


class Trainer:
    def __init__(
        self, config: TrainConfig, ctx: ddp.Context | None = None, command: str | None = None
    ):
        self.config = config
        self.ctx = ctx or ddp.Context(device=torch.device("cpu"))
        self.command = command or "python -m train.main"
        self.out = Path(config.out)
        self.started = time.time()
        self.best: dict[str, Any] | None = None
        self.init_source: dict[str, Any] | None = None  # what --init started from
        self.last_metrics: dict[str, float] = {}
        if self.ctx.world > 1 and config.batch_size % self.ctx.world:
            raise ConfigError(
                f"--batch-size {config.batch_size} must be a multiple of the number of "
                f"processes ({self.ctx.world})"
            )
        self.batch = config.batch_size // self.ctx.world
        self._on_main(self._check_out)
        self._prepare_data()
        self._build()
        if config.init:
            self._init_from(config.init)
        self.start = 0
        self.resume_state: dict[str, Any] | None = None
        if config.resume:
            self._load(ckpt.find_checkpoint(config.resume, self.out))

    # ------------------------------------------------------------------ set-up helpers

    def _on_main(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on rank 0; if it raises, every process raises the same error."""
        error, message = None, None
        if self.ctx.main:
            try:
                fn()
            except ReblurError as e:
                error, message = e, str(e)
        message = ddp.broadcast(self.ctx, message)
        if error is not None:
            raise error
        if message is not None:
            raise ConfigError(message)

    def _check_out(self) -> None:
        if self.config.resume:
            return
        if ckpt.list_checkpoints(self.out) or (self.out / "last.safetensors").exists():
            raise ConfigError(
                f"{self.out} already holds a training run; pass --resume to continue it or "
                "choose another --out"
            )

    def _prepare_data(self) -> None:
        cfg, ctx = self.config, self.ctx
        self.plan: DataPlan = plan_data(cfg.data, cfg.val, cfg.seed, cfg.gopro_blur)
        train_items = self.plan.train_items
        val_items = [item for item, _ in self.plan.val]
        self.store = ImageStore()
        self.cached = cfg.cache == "on" or (
            cfg.cache == "auto" and _estimate_bytes(train_items + val_items) <= cfg.cache_mb * 2**20
        )
        bar = tqdm(
            desc="checking data",
            unit="img",
            total=len(train_items) + len(val_items),
            disable=not (ctx.main and cfg.progress),
            leave=False,
        )
        full = cfg.check_data == "full"
        if self.cached:  # every process decodes everything once (that is the full check)
            problems = [
                check_items(train_items, cfg.crop, True, self.store, progress=bar),
                check_items(val_items, 8, True, self.store, progress=bar),
            ]
        else:  # each process checks its share
            bar.total = len(train_items[ctx.rank :: ctx.world]) + len(
                val_items[ctx.rank :: ctx.world]
            )
            problems = [
                check_items(train_items[ctx.rank :: ctx.world], cfg.crop, full, progress=bar),
                check_items(val_items[ctx.rank :: ctx.world], 8, full, progress=bar),
            ]
        bar.close()
        found = [p for ps in ddp.gather(ctx, problems) for p in ps if p]
        if found:
            raise InputError(f"bad training data: {found[0]}")
        blur = BlurParams(
            tuple(cfg.syn_frames),
            cfg.syn_shift,
            cfg.syn_rotation,
            cfg.syn_zoom,
            cfg.syn_noise,
            cfg.syn_soften,
        )
        self.dataset = TrainSet(
            train_items,
            cfg.crop,
            self.store,
            Augment(cfg.flip, cfg.rotate, cfg.channel_shuffle),
            blur,
            cfg.seed,
            reblur=cfg.mode == "mr",
        )
        self.valset = ValSet(self.plan.val, cfg.val_crop, self.store, blur, cfg.seed)
        self.sampler = MixSampler(
            [len(s.items) for s in self.plan.train],
            [s.share for s in self.plan.train],
            cfg.seed,
            ctx.rank,
            ctx.world,
        )
        self.total: int | None = None  # --minutes: fixed after CALIBRATION iterations (run)
        if cfg.iters is not None:
            self.total = cfg.iters
        elif cfg.epochs is not None:
            self.total = max(1, math.ceil(cfg.epochs * len(self.sampler) / self.batch))

    def _build(self) -> None:
        cfg, ctx = self.config, self.ctx
        device = ctx.device
        torch.manual_seed(cfg.seed)
        self.md = build(cfg.md, **cfg.md_config).to(device)
        self.mr = None
        if cfg.mode in ("joint", "mr"):
            self.mr = build("reblur", n_blocks=cfg.mr_blocks, width=cfg.mr_width).to(device)
        self.disc = PatchDiscriminator().to(device) if cfg.adversarial > 0 else None
        self.perceptual = None
        if cfg.perceptual > 0:
            self.perceptual = PerceptualLoss(cfg.vgg_weights, cfg.perceptual_layer).to(device)
        self.md_train: nn.Module = DeblurOutputs(self.md)
        self.mr_train, self.disc_train = self.mr, self.disc
        if ctx.distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.md_train = DistributedDataParallel(self.md_train, device_ids=ids)
            if self.mr is not None:
                self.mr_train = DistributedDataParallel(self.mr, device_ids=ids)
            if self.disc is not None:
                self.disc_train = DistributedDataParallel(self.disc, device_ids=ids)
        if cfg.channels_last:
            for module in self._networks().values():
                module.to(memory_format=torch.channels_last)
        if cfg.compile:  # the training forward passes; validation and saving use the originals
            self.md_train = torch.compile(self.md_train)
            if self.mr is not None:
                self.mr_train = torch.compile(self.mr_train)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        trained = (("opt_md", self.md), ("opt_mr", self.mr), ("opt_disc", self.disc))
        if cfg.mode == "mr":  # MD stays as it is (frozen), for validation and the weight file
            trained = (("opt_mr", self.mr),)
        for name, module in trained:
            if module is not None:
                self.optimizers[name] = torch.optim.Adam(
                    module.parameters(), lr=cfg.lr, betas=(0.9, 0.999)
                )
        self.amp_dtype = AMP_DTYPES.get(cfg.amp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _init_from(self, weights: str) -> None:
        """Copy MD (and a same-shaped MR) from a weight file: fine-tuning, e.g. an L1-trained
        MD continued with the reblurring loss."""
        loaded = load_weights(weights)
        # The source's own provenance travels along, so a fine-tuned file names every stage.
        self.init_source = {
            "weights": str(weights),
            "sha256": loaded.sha256,
            "provenance": loaded.metadata.get("provenance"),
        }
        pairs = [(self.md, loaded.deblur, "deblur")]
        if self.mr is not None and loaded.reblur is not None:
            pairs.append((self.mr, loaded.reblur, "reblur"))
        for target, source, role in pairs:
            if type(target) is not type(source) or target.config != source.config:
                raise ConfigError(
                    f"--init {weights}: its {role} module {name_of(source)} {source.config} "
                    f"differs from this run's {name_of(target)} {target.config}"
                )
            target.load_state_dict(source.state_dict())

    def _networks(self) -> dict[str, nn.Module]:
        found = {"md": self.md, "mr": self.mr, "disc": self.disc}
        return {k: v for k, v in found.items() if v is not None}

    def _load(self, path: Path) -> None:
        tensors, state = ckpt.load(path)
        for prefix, module in self._networks().items():
            ckpt.load_module(prefix, module, tensors)
        for name, optimizer in self.optimizers.items():
            if name not in state.get("optimizers", {}):
                raise ConfigError(f"{path} has no {name} state (it was trained in another mode)")
            ckpt.load_optimizer(name, optimizer, tensors, state["optimizers"][name])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start = int(state["iteration"])
        self.best = state.get("best")
        self.resume_state = state
        if self.total is None:  # --minutes: the count the interrupted run had fixed
            self.total = int(state["total_iterations"])
        if self.start > self.total:
            raise ConfigError(f"{path} is at iteration {self.start}, past the run's {self.total}")

    def autocast(self):
        return autocast(self.ctx.device, self.amp_dtype)

    # ------------------------------------------------------------------------- a step

    def step(self, blurry: torch.Tensor, sharp: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        if cfg.mode == "mr":  # the batch is (T_α(S), T(S)) pairs from synthesize_reblur
            return self.mr_step(blurry, sharp)
        pseudo = None
        if self.mr is not None:
            with self.autocast():
                pseudo = pseudo_sharp(self.md, sharp)  # MD before this iteration's update
        opt_md = self.optimizers["opt_md"]
        opt_md.zero_grad(set_to_none=True)
        with self.autocast():
            loss, parts, deblurred = deblur_loss(
                self.md_train,
                self.mr,
                blurry,
                sharp,
                cfg.lam,
                self.perceptual,
                cfg.perceptual,
                self.disc,
                cfg.adversarial,
            )
        self.scaler.scale(loss).backward()
        self.scaler.step(opt_md)
        deblurred = deblurred.detach()
        if self.mr is not None:
            opt_mr = self.optimizers["opt_mr"]
            opt_mr.zero_grad(set_to_none=True)
            with self.autocast():
                loss_r, parts_r = reblur_module_loss(self.mr_train, deblurred, blurry, pseudo)
            self.scaler.scale(loss_r).backward()
            self.scaler.step(opt_mr)
            parts.update(parts_r)
        if self.disc is not None:
            opt_disc = self.optimizers["opt_disc"]
            opt_disc.zero_grad(set_to_none=True)
            with self.autocast():
                real, fake = self.disc_train(torch.cat([sharp, deblurred])).chunk(2)
                loss_d = discriminator_loss(real, fake)
            self.scaler.scale(loss_d).backward()
            self.scaler.step(opt_disc)
            parts["disc"] = loss_d.detach()
        self.scaler.update()
        return parts

    def mr_step(self, partial: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """MR alone on |MR(T_α(S)) − T(S)|: learn to lengthen the blur an image already has."""
        opt_mr = self.optimizers["opt_mr"]
        opt_mr.zero_grad(set_to_none=True)
        with self.autocast():
            loss = losses.l1(self.mr_train(partial), target)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt_mr)
        self.scaler.update()
        return {"mr_syn": loss.detach()}

    # ---------------------------------------------------------------------- the loop

    def loader(self) -> DataLoader:
        cfg, ctx = self.config, self.ctx
        workers = cfg.workers
        if workers is None:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            workers = 0 if ctx.device.type != "cuda" else min(8, (os.cpu_count() or 1) // local)
        return DataLoader(
            self.dataset,
            batch_sampler=BatchStream(self.sampler, self.batch, start=self.start),
            num_workers=workers,
            pin_memory=ctx.device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )

    def run(self, on_iteration: Callable[[int], None] | None = None) -> Result:
        cfg, ctx = self.config, self.ctx
        self.logger = _Logger(self, truncate_after=self.start if cfg.resume else None)
        if self.resume_state is not None:
            saved = self.resume_state["rng"]
            ckpt.set_rng_state(saved[ctx.rank] if ctx.rank < len(saved) else saved[0])
        if self.total is not None and self.start >= self.total:
            self.logger.close()
            return self._result()
        bar = tqdm(
            total=self.total,
            initial=self.start,
            desc="train",
            unit="it",
            disable=not (ctx.main and cfg.progress),
            dynamic_ncols=True,
            smoothing=0.1,
        )
        sums: dict[str, torch.Tensor] = {}
        count, window_start = 0, time.perf_counter()
        self._train_start = window_start
        iteration = self.start
        batches = iter(self.loader())
        try:
            while self.total is None or iteration < self.total:
                lr = lr_at(iteration, self.total or CALIBRATION * 2, cfg.lr)  # not yet halved
                for optimizer in self.optimizers.values():
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                blurry, sharp = next(batches)
                layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
                blurry = blurry.to(ctx.device, non_blocking=True, memory_format=layout)
                sharp = sharp.to(ctx.device, non_blocking=True, memory_format=layout)
                parts = self.step(blurry, sharp)
                iteration += 1
                if self.total is None:
                    self._fix_total(iteration, bar)
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0) + value.float()
                count += 1
                bar.update()
                final = iteration == self.total
                if iteration % cfg.log_every == 0 or final:
                    means = ddp.mean(ctx, {k: float(v) / count for k, v in sums.items()})
                    elapsed = time.perf_counter() - window_start
                    self.logger.train(iteration, lr, means, count / max(elapsed, 1e-9))
                    bar.set_postfix(
                        {k: f"{v:.4f}" for k, v in means.items() if k in _SHOWN}, refresh=False
                    )
                    sums, count, window_start = {}, 0, time.perf_counter()
                due = self.total is not None  # --minutes: nothing is saved before it is fixed
                if due and len(self.valset) and (iteration % cfg.val_every == 0 or final):
                    self.validate(iteration)
                if due and (iteration % cfg.checkpoint_every == 0 or final):
                    self.save_checkpoint(iteration)
                if on_iteration is not None:
                    on_iteration(iteration)
        finally:
            bar.close()
            self.logger.close()
        return self._result()

    def _fix_total(self, iteration: int, bar: tqdm) -> None:
        """--minutes: after CALIBRATION iterations, the count that fits the time left (measured
        over the second half of them, after any compilation; every process agrees on it)."""
        if iteration == CALIBRATION // 2:
            self._calibration_start = time.perf_counter()
        if iteration < CALIBRATION:
            return
        now = time.perf_counter()
        per_iteration = (now - self._calibration_start) / (CALIBRATION - CALIBRATION // 2)
        left = self.config.minutes * 60 - (now - self._train_start)
        total = iteration + max(0, int(left / per_iteration))
        self.total = int(ddp.broadcast(self.ctx, total))
        bar.total = self.total
        bar.refresh()

    def _result(self) -> Result:
        best = self.out / "best.safetensors"
        return Result(
            self.out,
            self.out / "last.safetensors",
            best if best.exists() else None,
            self.total,
            self.last_metrics,
            time.time() - self.started,
        )

    # ---------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self, iteration: int) -> dict[str, float]:
        ctx = self.ctx
        rows = []
        for module in self._networks().values():
            module.eval()
        try:
            for index in range(ctx.rank, len(self.valset), ctx.world):
                name, blurry, sharp = self.valset[index]
                blurry, sharp = blurry[None].to(ctx.device), sharp[None].to(ctx.device)
                padded, h, w = pad_to_multiple(blurry, self.md.size_divisor)
                with self.autocast():
                    output = self.md(padded)[..., :h, :w]
                output = output.float().clamp(0, 1)
                out8, gt8, in8 = _to_u8(output), _to_u8(sharp), _to_u8(blurry)
                row = {
                    "name": name,
                    "psnr": psnr(out8, gt8),
                    "ssim": ssim(out8, gt8),
                    "psnr_input": psnr(in8, gt8),
                }
                if self.mr is not None:
                    with self.autocast():
                        row.update(mr_figures(self.mr, output, sharp, blurry))
                rows.append(row)
        finally:
            for module in self._networks().values():
                module.train()
        everything = [row for part in ddp.gather(ctx, rows) for row in part]
        metrics = summarize(everything)
        self.last_metrics = metrics
        self.logger.val(iteration, metrics, len(everything))
        report = mr_report(metrics)
        if ctx.main and report:
            tqdm.write(f"iteration {iteration}: {report}", file=sys.stderr)
        # MR alone trains in --mode mr, so its best weights are those that re-create blur best.
        key = "mr_gain" if self.config.mode == "mr" else "psnr"
        if ctx.main and (self.best is None or metrics[key] > self.best[key]):
            self.best = {"iteration": iteration, **_finite(metrics)}
            self.write_weights(self.out / "best.safetensors", iteration, metrics)
        return metrics

    # ---------------------------------------------------------------- saving

    def provenance(self, iteration: int, metrics: dict[str, float]) -> dict[str, Any]:
        val_names = [item.name for item, _ in self.plan.val]
        return {
            "command": self.command,
            "trainer": "python -m train.main",
            "data": {
                "train": [{"spec": s.spec, "items": len(s.items)} for s in self.plan.train],
                "val": self.plan.val_desc,
                "val_items": val_names[:200] + (["..."] if len(val_names) > 200 else []),
                "cache": self.cached,
            },
            "iterations": iteration,
            "total_iterations": self.total,
            "metrics": _finite(metrics),
            "best": self.best,
            "config": self.config.to_dict(),
            "init": self.init_source,
            "world_size": self.ctx.world,
            "device": str(self.ctx.device),
            "torch_version": torch.__version__,
            "package_version": __version__,
            "wall_seconds": round(time.time() - self.started, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def write_weights(self, path: Path, iteration: int, metrics: dict[str, float]) -> Path:
        return save_weights(
            path,
            {"deblur": self.md, "reblur": self.mr},
            {"provenance": self.provenance(iteration, metrics)},
        )

    def save_checkpoint(self, iteration: int) -> None:
        rngs = ddp.gather(self.ctx, ckpt.rng_state())
        if not self.ctx.main:
            return
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in self._networks().items():
            tensors.update(ckpt.module_tensors(prefix, module))
        optimizers = {}
        for name, optimizer in self.optimizers.items():
            saved_tensors, saved = ckpt.optimizer_state(name, optimizer)
            tensors.update(saved_tensors)
            optimizers[name] = saved
        state = {
            "iteration": iteration,
            "total_iterations": self.total,
            "config": self.config.to_dict(),
            "optimizers": optimizers,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "schedule": {"lr": self.config.lr, "milestones": milestones(self.total)},
            "best": self.best,
            "rng": rngs,
            "world_size": self.ctx.world,
            "data": [{"spec": s.spec, "items": len(s.items)} for s in self.plan.train],
        }
        ckpt.save(ckpt.checkpoint_path(self.out, iteration), tensors, state)
        for _, old in ckpt.list_checkpoints(self.out)[: -self.config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        self.write_weights(self.out / "last.safetensors", iteration, self.last_metrics)


_SHOWN = ("l1", "reblur", "blur", "sharp", "mr_syn", "perceptual", "adversarial")


def _estimate_bytes(items: list[Item]) -> int:
    """Decoded size of the items' images, from the headers of at most 64 of them."""
    refs = sorted({ref for item in items for ref in item.refs})
    if not refs:
        return 0
    step = max(1, len(refs) // 64)
    sizes = []
    for ref in refs[::step]:
        with contextlib.suppress(ReblurError):  # a bad file is reported by the data check
            sizes.append(image_size(ref))
    if not sizes:
        return 0
    return int(sum(h * w for h, w in sizes) * 3 * len(refs) / len(sizes))


class _Logger:
    """metrics.jsonl (and TensorBoard when available) on rank 0."""

    def __init__(self, trainer: Trainer, truncate_after: int | None):
        self.enabled = trainer.ctx.main
        self.writer = None
        self.file = None
        if not self.enabled:
            return
        cfg = trainer.config
        out = trainer.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        path = out / "metrics.jsonl"
        if truncate_after is not None and path.exists():  # drop what a killed run logged later
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iter", 0) <= truncate_after
            ]
            path.write_text("".join(line + "\n" for line in kept))
        self.file = open(path, "a")  # noqa: SIM115 (closed in close())
        if cfg.tensorboard != "off":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if cfg.tensorboard == "on":
                    raise DependencyError(
                        "--tensorboard on needs the tensorboard package: pip install tensorboard"
                    ) from None
            else:
                self.writer = SummaryWriter(str(out / "tensorboard"))

    def _write(self, entry: dict[str, Any]) -> None:
        self.file.write(json.dumps(_finite(entry)) + "\n")
        self.file.flush()

    def train(self, iteration: int, lr: float, means: dict[str, float], rate: float) -> None:
        if not self.enabled:
            return
        self._write({"iter": iteration, "lr": lr, **means, "it_per_s": round(rate, 4)})
        if self.writer is not None:
            for key, value in means.items():
                self.writer.add_scalar(f"train/{key}", value, iteration)
            self.writer.add_scalar("train/lr", lr, iteration)

    def val(self, iteration: int, metrics: dict[str, float], images: int) -> None:
        if not self.enabled:
            return
        self._write({"iter": iteration, "val": metrics, "val_images": images})
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"val/{key}", value, iteration)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def train(
    config: TrainConfig,
    command: str | None = None,
    on_iteration: Callable[[int], None] | None = None,
) -> Result:
    """Train as ``python -m train.main`` does (under torchrun: one call per process)."""
    ctx = ddp.setup(config.device)
    ok = False
    try:
        result = Trainer(config, ctx, command).run(on_iteration)
        ok = True
        return result
    finally:
        ddp.teardown(ok)


__all__ = [
    "MR_BARS",
    "DeblurOutputs",
    "Result",
    "Trainer",
    "deblur_loss",
    "lr_at",
    "milestones",
    "mr_figures",
    "mr_report",
    "multiscale_l1",
    "pseudo_sharp",
    "reblur_module_loss",
    "summarize",
    "train",
]
