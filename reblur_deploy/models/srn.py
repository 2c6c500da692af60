"""The SRN deblurring module of Nah et al., "Clean Images are Hard to Reblur", ICLR 2022.

SRN is the scale-recurrent network of Tao, Gao, Shen, Wang and Jia, "Scale-recurrent Network
for Deep Image Deblurring", CVPR 2018, in the revised form the ICLR paper uses: the ConvLSTM at
the bottleneck is removed, so the scales communicate only through images. Three scales (1/4,
1/2 and full resolution) run one encoder–decoder with one shared set of weights; the input of a
scale is the blurry image at that scale concatenated (6 channels) with the previous, coarser
scale's prediction upsampled ×2 (bilinear); the coarsest scale takes the blurry image twice.

One scale, at the default widths (32, 64, 128) and n = 3 ResBlocks per stage (5×5 convs,
4×4 stride-2 transposed convs):

    in-block    5×5 conv 6→32, 3 ResBlocks (5×5) at 32          full res ─────────────┐ (added)
    down 1      5×5 conv stride 2, 32→64, 3 ResBlocks at 64     1/2 res ──────────┐   │ (added)
    down 2      5×5 conv stride 2, 64→128, 3 ResBlocks at 128   1/4 res           │   │
    up 1        3 ResBlocks at 128, 4×4 transposed conv stride 2, 128→64 ◄────────┘   │
    up 2        3 ResBlocks at 64, 4×4 transposed conv stride 2, 64→32 ◄──────────────┘
    out-block   3 ResBlocks at 32, 5×5 conv 32→3, plus the blurry input of this scale

ReLU follows the in-conv, the two stride-2 convs and the two transposed convs (as in Tao et al.'s
code); the skips add the encoder's features after its ResBlocks to the transposed conv's output.
That is 6,881,251 parameters at the defaults, all shared by the three scales (a test recomputes
this number from the list above). The parameter count is that of one scale; the FLOPs are those
of one full-resolution pass times 1 + 1/4 + 1/16.

How this implementation differs from Tao et al.'s, and why:

* No ConvLSTM (the ICLR paper's revised SRN, see its appendix).
* Each scale predicts a residual added to its blurry input, and its output conv is zero-
  initialised, so an untrained network is the identity map at every scale, as the package's
  other networks are. (Tao et al. predict the sharp image directly.) The residual is taken
  w.r.t. the blurry image of the scale rather than the upsampled coarser prediction, which is
  smoother than it because of the bilinear upsampling.
* The blurry pyramid is made by area averaging (2×2 and 4×4 average pooling, exact because the
  size is a multiple of 16) instead of TensorFlow's bilinear resize, which aliases at 1/4.
* As in Tao et al.'s code, the upsampled coarser prediction is detached (no gradient flows from
  a finer scale into a coarser pass); the shared weights still get the gradients of every scale
  whose output enters the loss.

Outputs: ``forward(x)`` returns the finest prediction only, so exported graphs, ``Deblurrer``
and test-time adaptation see a network like any other. ``forward_scales(x)`` returns all three
predictions, coarse to fine (shapes H/4, H/2, H), for the multi-scale training loss.

``size_divisor`` is 16: the 1/4 scale must itself pass two stride-2 stages.

Constructor arguments (the paper's defaults): ``widths=(32, 64, 128)``, the channels at full,
1/2 and 1/4 resolution of a scale; ``n_blocks=3``, the ResBlocks of each of the six stages.
The number of scales is fixed at three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, check_input, check_widths, conv, up_conv, zero_init


def _blocks(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*(ResBlock(channels, 5) for _ in range(n)))


class SRN(nn.Module):
    size_divisor = 16  # 1/4 scale, then two stride-2 stages
    n_scales = 3

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), n_blocks: int = 3):
        super().__init__()
        w1, w2, w3 = widths = check_widths("srn", widths, n_blocks)
        self.config = {"widths": list(widths), "n_blocks": int(n_blocks)}
        # encoder
        self.head = conv(6, w1, 5)
        self.enc1 = _blocks(w1, n_blocks)
        self.down1 = conv(w1, w2, 5, stride=2)
        self.enc2 = _blocks(w2, n_blocks)
        self.down2 = conv(w2, w3, 5, stride=2)
        self.enc3 = _blocks(w3, n_blocks)
        # decoder
        self.dec3 = _blocks(w3, n_blocks)
        self.up1 = up_conv(w3, w2, 4)
        self.dec2 = _blocks(w2, n_blocks)
        self.up2 = up_conv(w2, w1, 4)
        self.dec1 = _blocks(w1, n_blocks)
        self.tail = zero_init(conv(w1, 3, 5))
        self.relu = nn.ReLU(inplace=True)

    def _scale(self, blurry: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """One pass of the shared encoder–decoder at one scale."""
        e1 = self.enc1(self.relu(self.head(torch.cat([blurry, previous], dim=1))))
        e2 = self.enc2(self.relu(self.down1(e1)))
        y = self.dec3(self.enc3(self.relu(self.down2(e2))))
        y = self.dec2(self.relu(self.up1(y)) + e2)
        y = self.dec1(self.relu(self.up2(y)) + e1)
        return blurry + self.tail(y)

    def forward_scales(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The predictions of all scales, coarse to fine: N×3×H/4×W/4, N×3×H/2×W/2, N×3×H×W."""
        check_input(x, self.size_divisor)
        pyramid = [F.avg_pool2d(x, 4), F.avg_pool2d(x, 2), x]
        outputs: list[torch.Tensor] = []
        previous = pyramid[0]  # the coarsest scale sees the blurry image twice
        for blurry in pyramid:
            if outputs:
                previous = F.interpolate(
                    outputs[-1].detach(), scale_factor=2, mode="bilinear", align_corners=False
                )
            outputs.append(self._scale(blurry, previous))
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The finest (full-resolution) prediction."""
        return self.forward_scales(x)[-1]
