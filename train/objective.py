"""The losses of a training step (Nah et al., ICLR 2022): MD's L_D = L1 + λ·L_Reblur (+ the
ablation terms), MR's L_R = L_Blur + L_Sharp, and Ŝ = MD(S). The per-image loss functions
themselves live in ``reblur_deploy.losses`` (TTA shares them); this module composes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reblur_deploy import losses
from reblur_deploy.device import frozen
from reblur_deploy.models import SRN

from .ablation import generator_loss


class DeblurOutputs(nn.Module):
    """MD as a module returning its predictions, coarse to fine: SRN's three scales, else [L].

    This is what DDP wraps, so that SRN's multi-scale forward is synchronised like any other.
    """

    def __init__(self, md: nn.Module):
        super().__init__()
        self.md = md

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if isinstance(self.md, SRN):
            return self.md.forward_scales(x)
        return [self.md(x)]


def multiscale_l1(outputs: list[torch.Tensor], sharp: torch.Tensor) -> torch.Tensor:
    """Mean over the outputs of L1 to the sharp image average-pooled to each output's size."""
    terms = []
    for output in outputs:
        factor = sharp.shape[-1] // output.shape[-1]
        target = F.avg_pool2d(sharp, factor) if factor > 1 else sharp
        terms.append(losses.l1(output, target))
    return torch.stack(terms).mean() if len(terms) > 1 else terms[0]


def pseudo_sharp(md: nn.Module, sharp: torch.Tensor) -> torch.Tensor:
    """Ŝ = MD(S) without gradient."""
    with torch.no_grad():
        return md(sharp)


def deblur_loss(
    md_outputs: nn.Module,
    blurry: torch.Tensor,
    sharp: torch.Tensor,
    *,
    mr: nn.Module | None = None,
    lam: float = 1.0,
    perceptual: nn.Module | None = None,
    perceptual_weight: float = 0.0,
    disc: nn.Module | None = None,
    adversarial_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """L_D = L1 (+ ``lam``·L_Reblur with ``mr`` frozen) (+ the ablation terms: a perceptual
    loss and an adversarial one through the discriminator ``disc``, each with its weight);
    returns (L_D, its parts, L)."""
    outputs = md_outputs(blurry)
    deblurred = outputs[-1]
    l1 = multiscale_l1(outputs, sharp)
    loss, parts = l1, {"l1": l1.detach()}
    with frozen(mr, disc):
        if mr is not None:
            reblur = losses.reblur_loss(mr, deblurred, sharp)
            loss = loss + lam * reblur
            parts["reblur"] = reblur.detach()
        if perceptual is not None:
            term = perceptual(deblurred, sharp)
            loss = loss + perceptual_weight * term
            parts["perceptual"] = term.detach()
        if disc is not None:
            term = generator_loss(disc(deblurred))
            loss = loss + adversarial_weight * term
            parts["adversarial"] = term.detach()
    parts["loss_md"] = loss.detach()
    return loss, parts, deblurred


def reblur_module_loss(
    mr: nn.Module, deblurred: torch.Tensor, blurry: torch.Tensor, pseudo: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_R = L_Blur + L_Sharp on L and Ŝ detached from MD."""
    l_blur, l_sharp = losses.reblur_module_losses(mr, deblurred.detach(), blurry, pseudo.detach())
    loss = l_blur + l_sharp
    return loss, {"blur": l_blur.detach(), "sharp": l_sharp.detach(), "loss_mr": loss.detach()}
