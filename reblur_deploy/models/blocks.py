"""Building blocks shared by every network (in the style of DeepDeblur-PyTorch)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, InputError


def check_widths(name: str, widths, n_blocks: int) -> tuple[int, int, int]:
    """The three stage widths of network ``name`` (full, 1/2 and 1/4 resolution) as positive
    ints, with ``n_blocks`` ≥ 0; else a ConfigError."""
    widths = tuple(int(w) for w in widths)
    if len(widths) != 3 or min(widths) < 1 or n_blocks < 0:
        raise ConfigError(
            f"{name} needs three positive widths and n_blocks ≥ 0, got {widths}, {n_blocks}"
        )
    return widths


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A conv with bias and 'same' padding (k // 2), the only padding the paper's networks use."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)


def up_conv(in_channels: int, out_channels: int, kernel: int = 3) -> nn.ConvTranspose2d:
    """A stride-2 transposed conv that exactly doubles H and W (the inverse of ``conv(stride=2)``
    on even sizes), for odd and even kernels alike.

    Odd kernels (the U-Net's 3×3) pad k // 2 and add one output row/column; even kernels (the
    4×4 of SRN and DMPHN) pad k / 2 − 1 and add none: both give an output of exactly 2H × 2W.
    """
    return nn.ConvTranspose2d(
        in_channels,
        out_channels,
        kernel,
        stride=2,
        padding=(kernel - 1) // 2,
        output_padding=kernel % 2,
    )


class ResBlock(nn.Module):
    """conv → ReLU → conv, plus identity; no activation after the addition."""

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        self.body = nn.Sequential(
            conv(channels, channels, kernel),
            nn.ReLU(inplace=True),
            conv(channels, channels, kernel),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def zero_init(layer: nn.Module) -> nn.Module:
    """Zero a residual branch's last layer so an untrained network is the identity map.

    The networks here predict a correction added to their input; starting from 'no change'
    keeps early training and untrained demos from producing noise. Gradients still reach the
    layer (its input is non-zero), so training proceeds normally from the first step.
    """
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def check_input(x: torch.Tensor, size_divisor: int) -> None:
    """Raise a clear error for inputs a network cannot take.

    Skipped while tracing or compiling: exported graphs take shapes the exporter constrains,
    and the pipeline pads H and W to ``size_divisor`` before calling a network.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return
    if x.dim() != 4 or x.shape[1] != 3:
        raise InputError(f"expected an N×3×H×W RGB tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % size_divisor or w % size_divisor:
        raise InputError(
            f"H and W must be multiples of {size_divisor} for this network, got {h}×{w}; "
            "pad the input (Deblurrer does this for you)"
        )
