"""What a training run writes and reads back: weight files with their provenance (last and
best), checkpoints (checkpoint.py is their file format), and resuming from one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from reblur_deploy._version import __version__
from reblur_deploy.errors import ConfigError
from reblur_deploy.weights import save_weights

from . import checkpoint as ckpt
from . import ddp
from .config import TrainConfig
from .logs import finite
from .setup import Data, Networks, milestones


class Saver:
    """Writes a run's files; ``best`` (the best validation so far) is saved with checkpoints."""

    def __init__(
        self,
        config: TrainConfig,
        ctx: ddp.Context,
        nets: Networks,
        data: Data,
        command: str,
        started: float,
        init_source: dict[str, Any] | None,
    ):
        self.config, self.ctx, self.nets, self.data = config, ctx, nets, data
        self.out = Path(config.out)
        self.command = command
        self.started = started
        self.init_source = init_source  # what --init started from
        self.best: dict[str, Any] | None = None

    def provenance(self, iteration: int, metrics: dict[str, float], total: int) -> dict[str, Any]:
        plan = self.data.plan
        val_names = [item.name for item, _ in plan.val]
        return {
            "command": self.command,
            "trainer": "python -m train.main",
            "data": {
                "train": [{"spec": s.spec, "items": len(s.items)} for s in plan.train],
                "val": plan.val_desc,
                "val_items": val_names[:200] + (["..."] if len(val_names) > 200 else []),
                "cache": self.data.cached,
            },
            "iterations": iteration,
            "total_iterations": total,
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

    def write_weights(self, path: Path, iteration: int, metrics: dict[str, float], total: int):
        return save_weights(
            path,
            {"deblur": self.nets.md, "reblur": self.nets.mr},
            {"provenance": self.provenance(iteration, metrics, total)},
        )

    def keep_if_best(self, iteration: int, metrics: dict[str, float], total: int) -> None:
        """best.safetensors: the weights of the best validation so far (rank 0 only)."""
        # MR alone trains in --mode mr, so its best weights are those that re-create blur best.
        key = "mr_gain" if self.config.mode == "mr" else "psnr"
        if self.ctx.main and (self.best is None or metrics[key] > self.best[key]):
            self.best = {"iteration": iteration, **finite(metrics)}
            self.write_weights(self.out / "best.safetensors", iteration, metrics, total)

    def save(self, iteration: int, total: int, metrics: dict[str, float]) -> None:
        """A checkpoint at ``iteration`` (the oldest beyond --keep-checkpoints removed) and
        last.safetensors with the latest validation ``metrics``."""
        rngs = ddp.gather(self.ctx, ckpt.rng_state())
        if not self.ctx.main:
            return
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in self.nets.modules().items():
            tensors.update(ckpt.module_tensors(prefix, module))
        optimizers = {}
        for name, optimizer in self.nets.optimizers.items():
            saved_tensors, saved = ckpt.optimizer_state(name, optimizer)
            tensors.update(saved_tensors)
            optimizers[name] = saved
        scaler = self.nets.scaler
        state = {
            "iteration": iteration,
            "total_iterations": total,
            "config": self.config.to_dict(),
            "optimizers": optimizers,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "schedule": {"lr": self.config.lr, "milestones": milestones(total)},
            "best": self.best,
            "rng": rngs,
            "world_size": self.ctx.world,
            "data": [{"spec": s.spec, "items": len(s.items)} for s in self.data.plan.train],
        }
        ckpt.save(ckpt.checkpoint_path(self.out, iteration), tensors, state)
        for _, old in ckpt.list_checkpoints(self.out)[: -self.config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        self.write_weights(self.out / "last.safetensors", iteration, metrics, total)

    def restore(self, path: Path, total: int | None) -> tuple[int, int, dict[str, Any]]:
        """Load a checkpoint into the networks, optimisers and scaler; returns the iteration it
        was saved at, the run's total (--minutes: the count the interrupted run had fixed) and
        this process's random number generator state to continue from."""
        tensors, state = ckpt.load(path)
        for prefix, module in self.nets.modules().items():
            ckpt.load_module(prefix, module, tensors)
        for name, optimizer in self.nets.optimizers.items():
            if name not in state.get("optimizers", {}):
                raise ConfigError(f"{path} has no {name} state (it was trained in another mode)")
            ckpt.load_optimizer(name, optimizer, tensors, state["optimizers"][name])
        if self.nets.scaler.is_enabled() and state.get("scaler"):
            self.nets.scaler.load_state_dict(state["scaler"])
        start = int(state["iteration"])
        self.best = state.get("best")
        if total is None:
            total = int(state["total_iterations"])
        if start > total:
            raise ConfigError(f"{path} is at iteration {start}, past the run's {total}")
        saved, rank = state["rng"], self.ctx.rank
        return start, total, saved[rank] if rank < len(saved) else saved[0]
