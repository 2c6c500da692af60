"""PyTorch backends: eager and ``torch.compile``. Not frozen: test-time adaptation can update
the module they run, and the next ``infer`` uses the adapted weights."""

from __future__ import annotations

import importlib.util
import shutil

import torch
from torch import nn

from ..device import autocast, memory_format
from .base import Backend


class EagerBackend(Backend):
    """The network as it is, in PyTorch (moved to ``device`` in place, in the device's memory
    format: channels-last on CPUs, see ``device.memory_format``). A 16-bit ``dtype`` runs
    under autocast: the weights stay float32, so test-time adaptation's small steps survive."""

    name = "eager"
    frozen = False

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype, **limits):
        self.memory_format = memory_format(device)
        module = module.to(device, torch.float32).to(memory_format=self.memory_format).eval()
        super().__init__(device, dtype, getattr(module, "size_divisor", 1), module, **limits)
        self.runner = module

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        # No inference_mode here: TTA calls this for its gradient-free passes, and tensors made
        # under inference_mode cannot enter autograd. Callers choose no_grad/inference_mode.
        batch = batch.contiguous(memory_format=self.memory_format)
        with autocast(self.device, self.dtype):
            return self.runner(batch).float()


class CompiledBackend(EagerBackend):
    """The network through ``torch.compile`` (Inductor). The first call for each new input shape
    compiles (tens of seconds on a CPU), so it pays off on long runs of equal-sized frames.

    ``mode`` and ``dynamic`` are passed to ``torch.compile``. Parameters stay inputs of the
    compiled graph, so weights adapted in ``module`` are used by the next call.
    """

    name = "compile"

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        mode: str | None = None,
        dynamic: bool | None = None,
        **limits,
    ):
        super().__init__(module, device, dtype, **limits)
        self.runner = torch.compile(self.module, mode=mode, dynamic=dynamic)
        self._batch = 0  # the largest batch compiled for

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        # A smaller batch (the tail of a video) is padded with copies of its last frame to the
        # largest batch seen: one more compile costs more than the few extra frames.
        n = batch.shape[0]
        self._batch = max(self._batch, n)
        if n < self._batch:
            pad = batch[-1:].expand(self._batch - n, *batch.shape[1:])
            batch = torch.cat([batch, pad])
        return super()._run(batch)[:n]


def compile_available(device: torch.device) -> bool:
    """Whether Inductor can generate code here: Triton for CUDA, a C++ compiler for the CPU."""
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))
