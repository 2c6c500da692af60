"""The DHN deblurring module of Nah et al., "Clean Images are Hard to Reblur", ICLR 2022.

DHN is DMPHN 1-2-4-8, the deep multi-patch hierarchical network of Zhang, Dai, Li and Koniusz,
"Deep Stacked Hierarchical Multi-patch Network for Image Deblurring", CVPR 2019, with the patch
split removed, as in the ICLR paper's appendix: every level convolves the whole image. Four
encoder–decoder levels run in turn (DMPHN's 8-, 4-, 2- and 1-patch levels, in that order); each
has its own weights. With B the blurry image, f_0 = 0 and y_0 = B:

    f_k = encoder_k(y_{k−1}) + f_{k−1}     (DMPHN adds the previous level's features)
    y_k = B + decoder_k(f_k)               (the next level's input: B plus this level's residual)
    output = y_4

One level, at the default widths (32, 64, 128) and n = 2 ResBlocks per stage (DMPHN's; 3×3
convs, 4×4 stride-2 transposed convs):

    encoder   3×3 conv 3→32, 2 ResBlocks at 32               full res
              3×3 conv stride 2, 32→64, 2 ResBlocks at 64    1/2 res
              3×3 conv stride 2, 64→128, 2 ResBlocks at 128  1/4 res
    decoder   2 ResBlocks at 128, 4×4 transposed conv stride 2, 128→64
              2 ResBlocks at 64, 4×4 transposed conv stride 2, 64→32
              2 ResBlocks at 32, 3×3 conv 32→3

As in DMPHN, the only non-linearities are the ReLUs inside the ResBlocks and there are no skips
between a level's encoder and decoder. That is 1,808,131 parameters per level and 7,232,524 for
the four levels at the defaults (a test recomputes these numbers from the list above).

How this implementation differs from DMPHN, and why:

* No patches (the ICLR paper's DHN): DMPHN splits the input of its successive levels into 8,
  4, 2 and 1 patches, encodes them separately and concatenates the features; here every level
  sees the whole image, so the levels differ only in their weights and no patch seam appears.
* The last level's output is also a residual added to B (DMPHN's last decoder outputs the
  image), and every level's output conv is zero-initialised: an untrained network is the
  identity map, as the package's other networks are, and the earlier levels start by passing B
  through unchanged. (Their output convs get gradients from the second training step on,
  through the next level's encoder, once the last level's output conv is no longer zero.)

``size_divisor`` is 4 (two stride-2 stages), whatever the number of levels.

Constructor arguments (DMPHN's defaults): ``widths=(32, 64, 128)``, the channels at full, 1/2
and 1/4 resolution; ``n_blocks=2``, the ResBlocks of each of the six stages of a level;
``n_levels=4`` (1-2-4-8; fewer levels make a faster, weaker network).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .blocks import ResBlock, check_input, check_widths, conv, up_conv, zero_init


def _blocks(channels: int, n: int) -> list[nn.Module]:
    return [ResBlock(channels, 3) for _ in range(n)]


def _encoder(widths: tuple[int, int, int], n: int) -> nn.Sequential:
    w1, w2, w3 = widths
    return nn.Sequential(
        conv(3, w1, 3), *_blocks(w1, n),
        conv(w1, w2, 3, stride=2), *_blocks(w2, n),
        conv(w2, w3, 3, stride=2), *_blocks(w3, n),
    )  # fmt: skip


def _decoder(widths: tuple[int, int, int], n: int) -> nn.Sequential:
    w1, w2, w3 = widths
    return nn.Sequential(
        *_blocks(w3, n), up_conv(w3, w2, 4),
        *_blocks(w2, n), up_conv(w2, w1, 4),
        *_blocks(w1, n), zero_init(conv(w1, 3, 3)),
    )  # fmt: skip


class DHN(nn.Module):
    size_divisor = 4  # two stride-2 stages

    def __init__(
        self, widths: tuple[int, int, int] = (32, 64, 128), n_blocks: int = 2, n_levels: int = 4
    ):
        super().__init__()
        widths = check_widths("dhn", widths, n_blocks)
        if n_levels < 1:
            raise ConfigError(f"dhn needs n_levels ≥ 1, got {n_levels}")
        self.config = {"widths": list(widths), "n_blocks": int(n_blocks), "n_levels": int(n_levels)}
        self.encoders = nn.ModuleList(_encoder(widths, n_blocks) for _ in range(n_levels))
        self.decoders = nn.ModuleList(_decoder(widths, n_blocks) for _ in range(n_levels))

    @property
    def tail(self) -> nn.Conv2d:
        """The network's output conv (the last level's), named as in the other networks."""
        return self.decoders[-1][-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.size_divisor)
        y, features = x, None
        for encoder, decoder in zip(self.encoders, self.decoders, strict=True):
            f = encoder(y)
            features = f if features is None else f + features
            y = x + decoder(features)
        return y
