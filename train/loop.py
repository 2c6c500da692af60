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

The set-up (data, networks, optimisers, --init) is in ``setup.py``, the weight files and
checkpoints in ``saving.py``, the losses in ``objective.py``, MR's validation figures in
``figures.py``; the run's metrics are written by ``logs.RunLog``.

Adam (lr 1e-4, betas 0.9, 0.999) for each network; the learning rate is halved at 50 %, 75 %
and 90 % of the run and is a pure function of the iteration. AMP: torch.autocast in bf16, or
fp16 with one GradScaler shared by the optimizers (``update`` once per iteration).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from reblur_deploy import losses
from reblur_deploy.metrics import psnr, ssim
from reblur_deploy.padding import pad_to_multiple
from reblur_deploy.progress import progress_bar

from . import checkpoint as ckpt
from . import ddp
from .ablation import discriminator_loss
from .config import TrainConfig
from .data import BatchStream
from .figures import mr_figures, mr_report, summarize, to_u8
from .logs import RunLog
from .objective import deblur_loss, pseudo_sharp, reblur_module_loss
from .saving import Saver
from .setup import (
    build_networks,
    check_out,
    init_from,
    lr_at,
    milestones,
    on_main,
    per_process_batch,
    planned_total,
    prepare_data,
)

CALIBRATION = 20  # --minutes: iterations timed before the run's length is fixed
_SHOWN = ("l1", "reblur", "blur", "sharp", "mr_syn", "perceptual", "adversarial")


@dataclass
class Result:
    """What ``train`` returns: the run folder, its weight files and final figures."""

    out: Path
    weights: Path
    best: Path | None
    iterations: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_at: int | None = None  # the iteration --stop-at / --stop-after ended this call at
    started_at: int = 0  # the iteration this call started from (resumed runs)


class Trainer:
    """One training run: set up (setup.py) and resumed (saving.py) here, then ``run``."""

    def __init__(
        self, config: TrainConfig, ctx: ddp.Context | None = None, command: str | None = None
    ):
        self.config = config
        self.ctx = ctx = ctx or ddp.Context(device=torch.device("cpu"))
        self.started = time.time()
        self.batch = per_process_batch(config, ctx)
        on_main(ctx, lambda: check_out(config))
        self.data = prepare_data(config, ctx)
        self.total = planned_total(config, self.data.sampler, self.batch)  # None: --minutes
        self.nets = build_networks(config, ctx)
        init_source = init_from(self.nets, config.init) if config.init else None
        command = command or "python -m train.main"
        self.saver = Saver(config, ctx, self.nets, self.data, command, self.started, init_source)
        self.start, self.rng_state = 0, None
        if config.resume:
            path = ckpt.find_checkpoint(config.resume, config.out)
            self.start, self.total, self.rng_state = self.saver.restore(path, self.total)
        self.last_metrics: dict[str, float] = {}
        self.stopped_at: int | None = None  # --stop-at / --stop-after ended the run here

    # ------------------------------------------------------------------------- a step

    def step(self, blurry: torch.Tensor, sharp: torch.Tensor) -> dict[str, torch.Tensor]:
        """One iteration's updates: MD, then MR, then the discriminator (module docstring)."""
        cfg, nets = self.config, self.nets
        if cfg.mode == "mr":  # the batch is (T_α(S), T(S)) pairs from synthesize_reblur
            return self.mr_step(blurry, sharp)
        pseudo = None
        if nets.mr is not None:
            with nets.autocast():
                pseudo = pseudo_sharp(nets.md, sharp)  # MD before this iteration's update
        with nets.autocast():
            loss, parts, deblurred = deblur_loss(
                nets.md_train,
                blurry,
                sharp,
                mr=nets.mr,
                lam=cfg.lam,
                perceptual=nets.perceptual,
                perceptual_weight=cfg.perceptual,
                disc=nets.disc,
                adversarial_weight=cfg.adversarial,
            )
        self._update("opt_md", loss)
        deblurred = deblurred.detach()
        if nets.mr is not None:
            with nets.autocast():
                loss_r, parts_r = reblur_module_loss(nets.mr_train, deblurred, blurry, pseudo)
            self._update("opt_mr", loss_r)
            parts.update(parts_r)
        if nets.disc is not None:
            with nets.autocast():
                real, fake = nets.disc_train(torch.cat([sharp, deblurred])).chunk(2)
                loss_d = discriminator_loss(real, fake)
            self._update("opt_disc", loss_d)
            parts["disc"] = loss_d.detach()
        nets.scaler.update()
        return parts

    def mr_step(self, partial: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """MR alone on |MR(T_α(S)) − T(S)|: learn to lengthen the blur an image already has."""
        with self.nets.autocast():
            loss = losses.l1(self.nets.mr_train(partial), target)
        self._update("opt_mr", loss)
        self.nets.scaler.update()
        return {"mr_syn": loss.detach()}

    def _update(self, name: str, loss: torch.Tensor) -> None:
        """One optimiser's step on ``loss`` (through the shared GradScaler; no-op without fp16)."""
        optimizer = self.nets.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        self.nets.scaler.scale(loss).backward()
        self.nets.scaler.step(optimizer)

    # ---------------------------------------------------------------------- the loop

    def loader(self) -> DataLoader:
        """Batches from iteration ``self.start`` on (the stream resumes where it stopped)."""
        cfg, ctx = self.config, self.ctx
        workers = cfg.workers
        if workers is None:
            local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            workers = 0 if ctx.device.type != "cuda" else min(8, (os.cpu_count() or 1) // local)
        return DataLoader(
            self.data.dataset,
            batch_sampler=BatchStream(self.data.sampler, self.batch, start=self.start),
            num_workers=workers,
            pin_memory=ctx.device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )

    def run(self, on_iteration: Callable[[int], None] | None = None) -> Result:
        cfg, ctx = self.config, self.ctx
        self.logger = RunLog(cfg, self.saver.out, ctx.main, self.start if cfg.resume else None)
        if self.rng_state is not None:
            ckpt.set_rng_state(self.rng_state)
        if self.total is not None and self.start >= self.total:
            self.logger.close()
            return self._result()
        # a bar on a terminal, a plain line every 10 s in a pipe or log file
        bar = progress_bar(self.total, not (ctx.main and cfg.progress), "it", self.start)
        window = _Window()
        self._train_start = window.start
        iteration = self.start
        batches = iter(self.loader())
        try:
            while self.total is None or iteration < self.total:
                lr = self._set_lr(iteration)
                blurry, sharp = self._to_device(next(batches))
                parts = self.step(blurry, sharp)
                iteration += 1
                if self.total is None:
                    self._fix_total(iteration, bar)
                window.add(parts)
                bar.update()
                final = iteration == self.total
                if iteration % cfg.log_every == 0 or final:
                    self._log(iteration, lr, window, bar)
                    window = _Window()
                due = self.total is not None  # --minutes: nothing is saved before it is fixed
                if due and len(self.data.valset) and (iteration % cfg.val_every == 0 or final):
                    self.validate(iteration)
                if due and (iteration % cfg.checkpoint_every == 0 or final):
                    self.saver.save(iteration, self.total, self.last_metrics)
                if on_iteration is not None:
                    on_iteration(iteration)
                if not final and self._stop_requested(iteration):
                    if iteration % cfg.checkpoint_every:  # else just saved
                        self.saver.save(iteration, self.total, self.last_metrics)
                    self.stopped_at = iteration
                    break
        finally:
            bar.close()
            self.logger.close()
        return self._result()

    def _set_lr(self, iteration: int) -> float:
        lr = lr_at(iteration, self.total or CALIBRATION * 2, self.config.lr)  # not yet halved
        for optimizer in self.nets.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def _to_device(self, batch: list[torch.Tensor]) -> list[torch.Tensor]:
        layout = torch.channels_last if self.config.channels_last else torch.contiguous_format
        device = self.ctx.device
        return [x.to(device, non_blocking=True, memory_format=layout) for x in batch]

    def _log(self, iteration: int, lr: float, window: _Window, bar) -> None:
        """The mean losses since the last log line, and the rate (all processes average)."""
        means = ddp.mean(self.ctx, window.means())
        self.logger.train(iteration, lr, means, window.rate())
        bar.set_postfix({k: f"{v:.4f}" for k, v in means.items() if k in _SHOWN}, refresh=False)

    def _stop_requested(self, iteration: int) -> bool:
        """--stop-at / --stop-after: end this invocation early (rank 0 decides for all, at
        logging intervals, so the processes stop at the same iteration)."""
        cfg = self.config
        if self.total is None or (cfg.stop_at is None and cfg.stop_after is None):
            return False
        if cfg.stop_at is not None and iteration >= cfg.stop_at:
            return True
        if cfg.stop_after is None or iteration % cfg.log_every:
            return False
        late = time.time() - self.started > cfg.stop_after * 60
        return bool(ddp.broadcast(self.ctx, late))

    def _fix_total(self, iteration: int, bar) -> None:
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
        out = self.saver.out
        best = out / "best.safetensors"
        return Result(
            out,
            out / "last.safetensors",
            best if best.exists() else None,
            self.total,
            self.last_metrics,
            time.time() - self.started,
            self.stopped_at,
            self.start,
        )

    # ---------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self, iteration: int) -> dict[str, float]:
        """PSNR/SSIM of MD (and MR's figures) on the validation set; best.safetensors kept."""
        ctx, nets, valset = self.ctx, self.nets, self.data.valset
        rows = []
        for module in nets.modules().values():
            module.eval()
        try:
            for index in range(ctx.rank, len(valset), ctx.world):
                name, blurry, sharp = valset[index]
                blurry, sharp = blurry[None].to(ctx.device), sharp[None].to(ctx.device)
                padded, h, w = pad_to_multiple(blurry, nets.md.size_divisor)
                with nets.autocast():
                    output = nets.md(padded)[..., :h, :w]
                output = output.float().clamp(0, 1)
                out8, gt8, in8 = to_u8(output), to_u8(sharp), to_u8(blurry)
                row = {
                    "name": name,
                    "psnr": psnr(out8, gt8),
                    "ssim": ssim(out8, gt8),
                    "psnr_input": psnr(in8, gt8),
                }
                if nets.mr is not None:
                    with nets.autocast():
                        row.update(mr_figures(nets.mr, output, sharp, blurry))
                rows.append(row)
        finally:
            for module in nets.modules().values():
                module.train()
        everything = [row for part in ddp.gather(ctx, rows) for row in part]
        metrics = summarize(everything)
        self.last_metrics = metrics
        self.logger.val(iteration, metrics, len(everything))
        report = mr_report(metrics)
        if ctx.main and report:
            tqdm.write(f"iteration {iteration}: {report}", file=sys.stderr)
        self.saver.keep_if_best(iteration, metrics, self.total)
        return metrics


class _Window:
    """The losses summed since the last log line, for their means and the rate."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.start = time.perf_counter()

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0) + value.float()
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: float(v) / self.count for k, v in self.sums.items()}

    def rate(self) -> float:
        return self.count / max(time.perf_counter() - self.start, 1e-9)


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


__all__ = ["Result", "Trainer", "lr_at", "milestones", "train"]
