"""The paper's losses, shared by training (train/) and test-time adaptation (tta.py).

Notation of Nah et al. (ICLR 2022): B blurry input, S sharp target, L = MD(B) the deblurred
image, MD the deblurring module, MR the reblurring module. All losses are mean absolute errors.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .io.arrays import array_to_tensor

# The scale at which MR judges an image (the blur score and TTA's loss): a copy shrunk ×2 by
# area averaging. MR's receptive field is 25 pixels (n = 2) and GOPRO's blur at 720p is often
# longer; at full resolution such a blurry frame looks smooth, not blurred, to MR, and what a
# TTA step sharpens raises MR's change. Halved, the blur fits: the bundled MR ranks blurry >
# deblurred > sharp on 7 of 7 GOPRO frames (2 of 7 at full resolution), and TTA's steps lower
# the loss they minimise (docs/TTA.md, "The scale MR judges at"). The same motion blurs a
# frame of a finer camera over more pixels, so larger frames are shrunk more (``blur_scale``):
# on 1080p and 4K copies of those frames MR ranks 100 % at 1/3 and 1/6, and at 1/2 88 % and
# 12 % (docs/TTA.md). Never below BLUR_SCALE: a small image may be a crop of a 720p frame.
BLUR_SCALE = 2
BLUR_LINES = 360  # the short side MR judges a frame at, about


def blur_scale(height: int, width: int) -> int:
    """The scale MR judges an H×W frame at when none is given: its short side shrunk to about
    ``BLUR_LINES`` (720p: 2, 1080p: 3, 4K: 6), at least ``BLUR_SCALE``."""
    return max(BLUR_SCALE, round(min(height, width) / BLUR_LINES))


def shrink(image: torch.Tensor, scale: int | None = None) -> torch.Tensor:
    """``image`` (N×C×H×W) shrunk by the integer ``scale`` (None: ``blur_scale`` of its size) by
    area averaging (edge rows and columns that do not fill a block are left out); unchanged at
    scale 1."""
    scale = min(scale or blur_scale(*image.shape[-2:]), *image.shape[-2:])
    return F.avg_pool2d(image, scale) if scale > 1 else image


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(prediction, target)


def blur_loss(mr: nn.Module, deblurred: torch.Tensor, blurry: torch.Tensor) -> torch.Tensor:
    """L_Blur = |MR(L) − B|: MR learns to re-create the blur left in L (trains MR)."""
    return F.l1_loss(mr(deblurred), blurry)


def sharp_loss(mr: nn.Module, pseudo_sharp: torch.Tensor) -> torch.Tensor:
    """L_Sharp = |MR(Ŝ) − Ŝ| with Ŝ = MD(S) computed without gradient by the caller (trains MR)."""
    return F.l1_loss(mr(pseudo_sharp), pseudo_sharp)


def reblur_loss(mr: nn.Module, deblurred: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """L_Reblur = |MR(L) − MR(S)|, the supervised reblurring loss (trains MD; MR(S) is a target)."""
    with torch.no_grad():
        target = mr(sharp)
    return F.l1_loss(mr(deblurred), target)


def self_supervised_loss(
    mr: nn.Module, deblurred: torch.Tensor, per_image: bool = False, scale: int | None = None
) -> torch.Tensor:
    """|MR(L) − L*| with L* = L without gradient: the test-time loss (lower = sharper), on L
    shrunk by ``scale`` (None: ``blur_scale`` of L's size; 1 = the paper's full resolution).

    ``per_image=True`` returns one value per image (N,) instead of the batch mean.
    """
    deblurred = shrink(deblurred, scale)
    error = (mr(deblurred) - deblurred.detach()).abs()
    return error.flatten(1).mean(1) if per_image else error.mean()


def blur_score(
    image: torch.Tensor | np.ndarray, mr: nn.Module, scale: int | None = None
) -> torch.Tensor | float:
    """A no-reference blurriness figure: the self-supervised reblurring loss per image, MR
    judging a copy shrunk by ``scale`` (None: ``blur_scale`` of the image's size).

    ``image`` is an N×3×H×W tensor in [0, 1] (returns N values) or one uint8/uint16 image array
    (returns a float). Lower = sharper, 0 = MR leaves the image unchanged; comparable only
    between images scored by the same MR at the same scale (by default: images of one size).
    """
    if isinstance(image, np.ndarray):
        return blur_score(array_to_tensor(image)[0], mr, scale).item()
    param = next(mr.parameters())
    with torch.no_grad():
        image = image.to(param.device, param.dtype)
        return self_supervised_loss(mr, image, per_image=True, scale=scale).float()


def reblur_module_losses(
    mr: nn.Module, deblurred: torch.Tensor, blurry: torch.Tensor, pseudo_sharp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_Blur, L_Sharp), the reblurring module's training losses, from one forward pass.

    Equal to ``(blur_loss(mr, L, B), sharp_loss(mr, Ŝ))`` for equal batch sizes of L and Ŝ, but MR
    runs once on the concatenated batch [L; Ŝ] (as DistributedDataParallel needs: one forward
    per backward). Pass ``deblurred`` and ``pseudo_sharp`` without gradient (MR's step must not
    reach MD).
    """
    output = mr(torch.cat([deblurred, pseudo_sharp]))
    reblurred, kept = output.split([deblurred.shape[0], pseudo_sharp.shape[0]])
    return F.l1_loss(reblurred, blurry), F.l1_loss(kept, pseudo_sharp)
