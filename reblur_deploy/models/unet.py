"""The U-Net deblurring module MD of Nah et al., "Clean Images are Hard to Reblur", ICLR 2022.

Follows Table A of the paper's appendix (channel widths and block count are constructor
arguments with the paper's defaults):

    5×5 conv 3→64                      full resolution  ─────────────┐ (added)
    3×3 conv stride 2, 64→128          1/2 resolution   ─────────┐   │ (added)
    3×3 conv stride 2, 128→192         1/4 resolution            │   │
    8 ResBlocks (3×3) at 192                                     │   │
    3×3 transposed conv stride 2, 192→128   1/2 resolution  ◄────┘   │
    3×3 transposed conv stride 2, 128→64    full resolution ◄────────┘
    5×5 conv 64→3, plus the input (global residual)

ReLU follows every conv except the last one and the second conv of each ResBlock. The skips are
additive, so the parameter count is exactly what Table A implies (about 5.9 M at the defaults).
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ResBlock, check_input, check_widths, conv, up_conv, zero_init


class UNet(nn.Module):
    size_divisor = 4  # two stride-2 stages

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 192), n_blocks: int = 8):
        super().__init__()
        w1, w2, w3 = widths = check_widths("unet", widths, n_blocks)
        self.config = {"widths": list(widths), "n_blocks": int(n_blocks)}
        self.head = conv(3, w1, 5)
        self.down1 = conv(w1, w2, 3, stride=2)
        self.down2 = conv(w2, w3, 3, stride=2)
        self.body = nn.Sequential(*(ResBlock(w3, 3) for _ in range(n_blocks)))
        self.up1 = up_conv(w3, w2, 3)
        self.up2 = up_conv(w2, w1, 3)
        self.tail = zero_init(conv(w1, 3, 5))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.size_divisor)
        e1 = self.relu(self.head(x))
        e2 = self.relu(self.down1(e1))
        y = self.body(self.relu(self.down2(e2)))
        y = self.relu(self.up1(y)) + e2
        y = self.relu(self.up2(y)) + e1
        return x + self.tail(y)
