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
    mr: nn.Module, deblurred: torch.Tensor, per_image: bool = False
) -> torch.Tensor:
    """|MR(L) − L*| with L* = L without gradient: the test-time loss (lower = sharper).

    ``per_image=True`` returns one value per image (N,) instead of the batch mean.
    """
    error = (mr(deblurred) - deblurred.detach()).abs()
    return error.flatten(1).mean(1) if per_image else error.mean()


def blur_score(image: torch.Tensor | np.ndarray, mr: nn.Module) -> torch.Tensor | float:
    """A no-reference blurriness figure: the self-supervised reblurring loss per image.

    ``image`` is an N×3×H×W tensor in [0, 1] (returns N values) or one uint8/uint16 image array
    (returns a float). Lower = sharper, 0 = MR leaves the image unchanged; comparable only
    between images scored by the same MR.
    """
    if isinstance(image, np.ndarray):
        return blur_score(array_to_tensor(image)[0], mr).item()
    param = next(mr.parameters())
    with torch.no_grad():
        return self_supervised_loss(mr, image.to(param.device, param.dtype), per_image=True).float()


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
