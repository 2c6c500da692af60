"""Parity of an exported model against the eager PyTorch network it came from.

Every exporter runs the written file (ONNX Runtime, TorchScript, torch.export, TensorRT) on
random inputs of two sizes and two batch sizes and compares it with eager PyTorch in float32;
a difference above the tolerance is an error and the file is not kept.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from reblur_deploy.backends.graphs import frozen_copy
from reblur_deploy.errors import ReblurError

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}  # max |Δ| on [0, 1] pixels
Shape = tuple[int, int, int, int]


class VerificationError(ReblurError):
    """An exported model is invalid or does not reproduce the PyTorch network."""


@dataclass
class Check:
    shape: Shape
    max_abs_diff: float

    def __str__(self) -> str:
        return f"{'×'.join(map(str, self.shape))}: max |Δ| = {self.max_abs_diff:.2e}"


def _round_up(value: int, divisor: int) -> int:
    return divisor * math.ceil(value / divisor)


def check_shapes(size_divisor: int) -> list[Shape]:
    """Two inputs that differ in batch size, height and width (multiples of the divisor)."""
    d = max(1, int(size_divisor))
    return [(1, 3, _round_up(64, d), _round_up(96, d)), (2, 3, _round_up(96, d), _round_up(64, d))]


def profile_shapes(profile: tuple[Shape, Shape, Shape]) -> list[Shape]:
    """Two inputs inside a TensorRT optimisation profile: its min shape and its opt size with a
    larger batch where the profile allows one."""
    lo, opt, hi = profile
    second = (min(max(2, lo[0]), hi[0]), 3, opt[2], opt[3])
    return [tuple(lo), second] if second != tuple(lo) else [tuple(lo), tuple(hi)]


@contextlib.contextmanager
def _exact_fp32():
    """Turn TF32 off while the CUDA reference runs (it would differ by ~1e-3 on its own)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def eager_reference(module: nn.Module, device: str | torch.device = "cpu") -> Callable:
    """The network in eager PyTorch, float32, without TF32: the reference exports must match."""
    net = frozen_copy(module, device=device)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _exact_fp32():
            return net(x)

    return run


def compare(
    reference: Callable[[torch.Tensor], torch.Tensor],
    candidate: Callable[[torch.Tensor], torch.Tensor],
    shapes: Sequence[Shape],
    tolerance: float,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[Check]:
    """Max |candidate − reference| on uniform random inputs of each shape; raises
    ``VerificationError`` (listing every check) when one exceeds ``tolerance`` or is not finite."""
    generator = torch.Generator().manual_seed(seed)
    checks = []
    for shape in shapes:
        x = torch.rand(*shape, generator=generator).to(device)
        expected = reference(x).float()
        try:
            got = candidate(x)
        except ReblurError:
            raise
        except Exception as e:  # runtimes raise their own types
            raise VerificationError(f"the exported model fails to run on {shape}: {e}") from None
        got = torch.as_tensor(got).to(expected.device).float()
        if got.shape != expected.shape:
            raise VerificationError(
                f"the exported model returns {tuple(got.shape)} for {shape}, "
                f"PyTorch {tuple(expected.shape)}"
            )
        diff = (got - expected).abs().max().item()
        checks.append(Check(tuple(shape), diff if math.isfinite(diff) else math.inf))
    worst = max(c.max_abs_diff for c in checks)
    if not worst <= tolerance:
        raise VerificationError(
            f"parity check failed: max |Δ| {worst:.2e} > tolerance {tolerance:.0e} "
            f"({'; '.join(map(str, checks))}); the file was not written"
        )
    return checks
