"""Distributed data parallel under torchrun: process group, device, and small collectives.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them the
run is a single process and every helper here is a no-op. The backend is NCCL when the process
has a CUDA device, gloo otherwise (CPU training, or a CPU-only node).

Teardown must leave no gloo thread running: a process group that outlives
``destroy_process_group`` keeps gloo's worker threads alive until the interpreter exits, where
they race with C++ static destructors and now and then abort a finished run ("terminate called
without an active exception", SIGABRT). In torch 2.13, importing ``torch._dynamo`` after the
group exists is what keeps it alive: dynamo takes about ten references to the default group that
are never released (measured; DDP's constructor and ``torch.optim.Adam`` both import dynamo).
So ``setup`` imports dynamo first. A test checks that no gloo thread is left after a run.
"""

from __future__ import annotations

import datetime
import importlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from reblur_deploy.device import resolve_device
from reblur_deploy.errors import ConfigError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str = "auto", timeout_minutes: float = 30) -> Context:
    """Start the process group under torchrun (once) and choose this process's device."""
    if not launched_by_torchrun():
        return Context(device=resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) on this "
                "node: lower --nproc-per-node"
            )
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    else:
        chosen = resolve_device(device)
    if world > 1 and not dist.is_initialized():
        importlib.import_module("torch._dynamo")  # before the group exists: see the docstring
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=chosen if chosen.type == "cuda" else None,
        )
    return Context(rank, world, local_rank, chosen)


def teardown(ok: bool = True) -> None:
    """Destroy the process group. After a successful run every process first waits for the
    others (rank 0 may still be writing weights), so none closes its connections mid-exchange;
    after a failure nobody waits, as a peer may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def gather(ctx: Context, value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order, on every process."""
    if not ctx.distributed:
        return [value]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, value)
    return out


def broadcast(ctx: Context, value: Any) -> Any:
    """Rank 0's ``value`` on every process."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(ctx: Context, values: dict[str, float]) -> dict[str, float]:
    """The mean over the processes of a dict of floats (same keys everywhere)."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / ctx.world).tolist(), strict=True))
