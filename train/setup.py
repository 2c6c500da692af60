"""A training run's set-up: its data, its networks and optimisers, and --init.

``Trainer`` (loop.py) calls these once, before the first iteration; resuming from a checkpoint
is in saving.py, beside the code that writes checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from reblur_deploy.device import autocast
from reblur_deploy.errors import ConfigError, InputError, ReblurError
from reblur_deploy.models import build, name_of
from reblur_deploy.weights import load_weights

from . import checkpoint as ckpt
from . import ddp
from .ablation import PatchDiscriminator, PerceptualLoss
from .config import TrainConfig
from .data import (
    Augment,
    DataPlan,
    ImageStore,
    MixSampler,
    TrainSet,
    ValSet,
    check_items,
    decoded_bytes,
    plan_data,
)
from .objective import DeblurOutputs
from .synthetic import BlurParams

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MILESTONES = (0.5, 0.75, 0.9)


def on_main(ctx: ddp.Context, fn: Callable[[], Any]) -> None:
    """Run ``fn`` on rank 0; if it raises, every process raises the same error."""
    error, message = None, None
    if ctx.main:
        try:
            fn()
        except ReblurError as e:
            error, message = e, str(e)
    message = ddp.broadcast(ctx, message)
    if error is not None:
        raise error
    if message is not None:
        raise ConfigError(message)


def check_out(config: TrainConfig) -> None:
    """A new run must not write over an earlier one's checkpoints."""
    out = config.out
    if config.resume:
        return
    if ckpt.list_checkpoints(out) or (Path(out) / "last.safetensors").exists():
        raise ConfigError(
            f"{out} already holds a training run; pass --resume to continue it or "
            "choose another --out"
        )


def per_process_batch(config: TrainConfig, ctx: ddp.Context) -> int:
    if ctx.world > 1 and config.batch_size % ctx.world:
        raise ConfigError(
            f"--batch-size {config.batch_size} must be a multiple of the number of "
            f"processes ({ctx.world})"
        )
    return config.batch_size // ctx.world


# ----------------------------------------------------------------------------- data


@dataclass
class Data:
    """The run's data: the plan (which images), the training and validation sets, the sampler."""

    plan: DataPlan
    store: ImageStore
    cached: bool  # every image decoded once and kept in memory
    dataset: TrainSet
    valset: ValSet
    sampler: MixSampler


def prepare_data(cfg: TrainConfig, ctx: ddp.Context) -> Data:
    plan = plan_data(cfg.data, cfg.val, cfg.seed, cfg.gopro_blur)
    train_items = plan.train_items
    val_items = [item for item, _ in plan.val]
    store = ImageStore()
    cached = cfg.cache == "on" or (
        cfg.cache == "auto" and decoded_bytes(train_items + val_items) <= cfg.cache_mb * 2**20
    )
    _check_data(cfg, ctx, train_items, val_items, store if cached else None)
    blur = BlurParams(
        tuple(cfg.syn_frames),
        cfg.syn_shift,
        cfg.syn_rotation,
        cfg.syn_zoom,
        cfg.syn_noise,
        cfg.syn_soften,
    )
    augment = Augment(cfg.flip, cfg.rotate, cfg.channel_shuffle)
    dataset = TrainSet(
        train_items, cfg.crop, store, augment, blur, cfg.seed, reblur=cfg.mode == "mr",
        sharp_share=cfg.sharp_share, keep_mean=cfg.keep_mean,
    )  # fmt: skip
    valset = ValSet(plan.val, cfg.val_crop, store, blur, cfg.seed)
    sizes, shares = [len(s.items) for s in plan.train], [s.share for s in plan.train]
    sampler = MixSampler(sizes, shares, cfg.seed, ctx.rank, ctx.world)
    return Data(plan, store, cached, dataset, valset, sampler)


def _check_data(cfg: TrainConfig, ctx: ddp.Context, train_items, val_items, store) -> None:
    """Decode (``store``: into the cache) or look at every image before training starts."""
    if store is None:  # each process checks its share
        train_items = train_items[ctx.rank :: ctx.world]
        val_items = val_items[ctx.rank :: ctx.world]
    bar = tqdm(
        desc="checking data",
        unit="img",
        total=len(train_items) + len(val_items),
        disable=not (ctx.main and cfg.progress),
        leave=False,
    )
    if store is not None:  # every process decodes everything once (that is the full check)
        problems = [
            check_items(train_items, cfg.crop, True, store, progress=bar),
            check_items(val_items, 8, True, store, progress=bar),
        ]
    else:
        full = cfg.check_data == "full"
        problems = [
            check_items(train_items, cfg.crop, full, progress=bar),
            check_items(val_items, 8, full, progress=bar),
        ]
    bar.close()
    found = [p for ps in ddp.gather(ctx, problems) for p in ps if p]
    if found:
        raise InputError(f"bad training data: {found[0]}")


def planned_total(cfg: TrainConfig, sampler: MixSampler, batch: int) -> int | None:
    """The run's length in iterations; None for --minutes (fixed once the rate is measured)."""
    if cfg.iters is not None:
        return cfg.iters
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * len(sampler) / batch))
    return None


# ----------------------------------------------------------------------------- networks


@dataclass
class Networks:
    """MD, MR and the ablations' networks, their training wrappers (DDP, torch.compile: used for
    the training forward passes only), their optimisers and the AMP settings."""

    md: nn.Module
    mr: nn.Module | None
    disc: nn.Module | None
    perceptual: nn.Module | None
    md_train: nn.Module
    mr_train: nn.Module | None
    disc_train: nn.Module | None
    optimizers: dict[str, torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    device: torch.device

    def modules(self) -> dict[str, nn.Module]:
        """The networks a checkpoint holds, by prefix."""
        found = {"md": self.md, "mr": self.mr, "disc": self.disc}
        return {k: v for k, v in found.items() if v is not None}

    def autocast(self):
        return autocast(self.device, self.amp_dtype)


def build_networks(cfg: TrainConfig, ctx: ddp.Context) -> Networks:
    device = ctx.device
    torch.manual_seed(cfg.seed)
    md = build(cfg.md, **cfg.md_config).to(device)
    mr = None
    if cfg.mode in ("joint", "mr"):
        mr = build("reblur", n_blocks=cfg.mr_blocks, width=cfg.mr_width).to(device)
    disc = PatchDiscriminator().to(device) if cfg.adversarial > 0 else None
    perceptual = None
    if cfg.perceptual > 0:
        perceptual = PerceptualLoss(cfg.vgg_weights, cfg.perceptual_layer).to(device)
    md_train, mr_train, disc_train = _wrap(ctx, DeblurOutputs(md), mr, disc)
    if cfg.channels_last:
        for module in (md, mr, disc):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if cfg.compile:  # the training forward passes; validation and saving use the originals
        md_train = torch.compile(md_train)
        if mr is not None:
            mr_train = torch.compile(mr_train)
    trained = {"opt_md": md, "opt_mr": mr, "opt_disc": disc}
    if cfg.mode == "mr":  # MD stays as it is (frozen), for validation and the weight file
        trained = {"opt_mr": mr}
    optimizers = {
        name: torch.optim.Adam(module.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        for name, module in trained.items()
        if module is not None
    }
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp_dtype = AMP_DTYPES.get(cfg.amp)
    wrapped = (md_train, mr_train, disc_train)
    return Networks(md, mr, disc, perceptual, *wrapped, optimizers, scaler, amp_dtype, device)


def milestones(total: int) -> list[int]:
    """Iterations from which the learning rate is halved once more (50 %, 75 %, 90 %)."""
    return [int(p * total) for p in MILESTONES]


def lr_at(iteration: int, total: int, base: float) -> float:
    """The learning rate of the update made at 0-based ``iteration`` of a ``total``-long run."""
    return base * 0.5 ** sum(iteration >= m for m in milestones(total))


def _wrap(ctx: ddp.Context, *modules: nn.Module | None) -> list:
    """Each module in DistributedDataParallel when the run has several processes."""
    if not ctx.distributed:
        return list(modules)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return [None if m is None else DistributedDataParallel(m, device_ids=ids) for m in modules]


def init_from(nets: Networks, weights: str) -> dict[str, Any]:
    """Copy MD (and a same-shaped MR) from a weight file: fine-tuning, e.g. an L1-trained MD
    continued with the reblurring loss. Returns what the run started from, for provenance."""
    loaded = load_weights(weights)
    pairs = [(nets.md, loaded.deblur, "deblur")]
    if nets.mr is not None and loaded.reblur is not None:
        pairs.append((nets.mr, loaded.reblur, "reblur"))
    for target, source, role in pairs:
        if type(target) is not type(source) or target.config != source.config:
            raise ConfigError(
                f"--init {weights}: its {role} module {name_of(source)} {source.config} "
                f"differs from this run's {name_of(target)} {target.config}"
            )
        target.load_state_dict(source.state_dict())
    # The source's own provenance travels along, so a fine-tuned file names every stage.
    return {
        "weights": str(weights),
        "sha256": loaded.sha256,
        "provenance": loaded.metadata.get("provenance"),
    }
