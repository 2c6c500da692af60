"""The reblurring module MR of Nah et al., "Clean Images are Hard to Reblur", ICLR 2022.

Follows Table C of the paper's appendix: a 5×5 conv 3→64, n ResBlocks of 5×5 convs at 64
channels, a 5×5 conv 64→3, and a global residual (output = input + network(input)). The paper
studies n ∈ {1, 2, 3, 4} and uses n = 2 by default. There is no down-sampling, so the module
takes any H and W.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import ResBlock, check_input, conv, zero_init


class Reblur(nn.Module):
    size_divisor = 1

    def __init__(self, n_blocks: int = 2, width: int = 64):
        super().__init__()
        if n_blocks < 0 or width < 1:
            raise ConfigError(f"reblur needs n_blocks ≥ 0 and width ≥ 1, got {n_blocks}, {width}")
        self.config = {"n_blocks": int(n_blocks), "width": int(width)}
        self.head = conv(3, width, 5)
        self.body = nn.Sequential(*(ResBlock(width, 5) for _ in range(n_blocks)))
        self.tail = zero_init(conv(width, 3, 5))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.size_divisor)
        return x + self.tail(self.body(self.relu(self.head(x))))
