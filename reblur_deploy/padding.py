"""Padding to a network's size_divisor (shared by the pipeline and TTA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(batch: torch.Tensor, divisor: int) -> tuple[torch.Tensor, int, int]:
    """Pad H and W at the bottom/right up to multiples of ``divisor``; return (padded, H, W).

    Reflect padding continues the image without a hard edge the network would try to deblur;
    an image too small to reflect (a side no longer than the pad) is padded by replication.
    """
    h, w = batch.shape[-2:]
    ph, pw = -h % divisor, -w % divisor
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        batch = F.pad(batch, (0, pw, 0, ph), mode=mode)
    return batch, h, w
