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

The losses are composed in ``objective.py``, MR's validation figures computed in
``figures.py`` and the run's metrics written by ``logs.RunLog``.

Adam (lr 1e-4, betas 0.9, 0.999) for each network; the learning rate is halved at 50 %, 75 %
and 90 % of the run and is a pure function of the iteration. AMP: torch.autocast in bf16, or
fp16 with one GradScaler shared by the optimizers (``update`` once per iteration).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from reblur_deploy import losses
from reblur_deploy._version import __version__
from reblur_deploy.device import autocast
from reblur_deploy.errors import ConfigError, InputError, ReblurError
from reblur_deploy.metrics import psnr, ssim
from reblur_deploy.models import build, name_of
from reblur_deploy.padding import pad_to_multiple
from reblur_deploy.weights import load_weights, save_weights

from . import checkpoint as ckpt
from . import ddp
from .ablation import PatchDiscriminator, PerceptualLoss, discriminator_loss
from .config import TrainConfig
from .data import (
    Augment,
    BatchStream,
    DataPlan,
    ImageStore,
    MixSampler,
    TrainSet,
    ValSet,
    check_items,
    decoded_bytes,
    plan_data,
)
from .figures import mr_figures, mr_report, summarize, to_u8
from .logs import RunLog, finite
from .objective import DeblurOutputs, deblur_loss, pseudo_sharp, reblur_module_loss
from .synthetic import BlurParams

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MILESTONES = (0.5, 0.75, 0.9)
CALIBRATION = 20  # --minutes: iterations timed before the run's length is fixed


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
    stopped_at: int | None = None  # the iteration --stop-at / --stop-after ended this call at


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
        self.stopped_at: int | None = None  # --stop-at / --stop-after ended the run here
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
            cfg.cache == "auto" and decoded_bytes(train_items + val_items) <= cfg.cache_mb * 2**20
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
                blurry,
                sharp,
                mr=self.mr,
                lam=cfg.lam,
                perceptual=self.perceptual,
                perceptual_weight=cfg.perceptual,
                disc=self.disc,
                adversarial_weight=cfg.adversarial,
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
        self.logger = RunLog(cfg, self.out, self.ctx.main, self.start if cfg.resume else None)
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
                if not final and self._stop_requested(iteration):
                    if iteration % cfg.checkpoint_every:  # else just saved
                        self.save_checkpoint(iteration)
                    self.stopped_at = iteration
                    break
        finally:
            bar.close()
            self.logger.close()
        return self._result()

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
            self.stopped_at,
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
                out8, gt8, in8 = to_u8(output), to_u8(sharp), to_u8(blurry)
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
            self.best = {"iteration": iteration, **finite(metrics)}
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
            "metrics": finite(metrics),
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
