"""MR's validation figures: does the reblurring module re-create blur, and does its blur score
rank blurry > deblurred > sharp (docs/TRAINING.md)? ``scripts/quality_bar.py`` reports the same."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reblur_deploy import losses
from reblur_deploy.metrics import psnr

# What makes MR useful (docs/TRAINING.md): it re-creates blur, and scores blurry input above
# the deblurred output above the ground truth, with a clear margin.
MR_BARS = {"mr_gain": 1.0, "mr_ranked": 0.9, "mr_ratio": 2.0}


def mr_report(metrics: dict[str, float]) -> str | None:
    """One line with MR's three validation figures and whether they meet ``MR_BARS``.

    ``mr_gain``: PSNR(MR(L), B) − PSNR(L, B) in dB, how well MR re-creates the blur left in L;
    ``mr_ranked``: the share of images whose blur scores rank blurry > deblurred > sharp;
    ``mr_ratio``: the median over images of blur score(blurry) / blur score(sharp);
    ``mr_sharp_psnr``: PSNR(MR(S), S), how little MR changes a sharp image.
    """
    if "mr_gain" not in metrics:
        return None
    missed = [key for key, bar in MR_BARS.items() if not metrics[key] >= bar]
    verdict = "useful" if not missed else f"not yet useful ({', '.join(missed)} below the bar)"
    return (
        f"MR re-creates blur {metrics['mr_gain']:+.2f} dB, ranks blurry > deblurred > sharp on "
        f"{100 * metrics['mr_ranked']:.0f} % of images, blurry/sharp score "
        f"{metrics['mr_ratio']:.2f}x, PSNR(MR(S), S) {metrics['mr_sharp_psnr']:.1f} dB: {verdict}"
    )


def mr_figures(
    mr: nn.Module,
    output: torch.Tensor,
    sharp: torch.Tensor,
    blurry: torch.Tensor,
    scale: int | None = None,
) -> dict[str, float]:
    """One image's MR figures (see ``mr_report``) and its three blur scores (MR judging at
    ``scale``), from 1×3×H×W tensors in [0, 1]: the deblurred ``output`` L, the ``sharp`` S and
    the ``blurry`` B."""
    batch = torch.cat([output, sharp, blurry])
    scores = dict(zip(("blur_output", "blur_sharp", "blur_input"),
                      losses.blur_score(batch, mr, scale).tolist(), strict=True))  # fmt: skip
    with torch.no_grad():
        reblurred = mr(torch.cat([output, sharp])).float().clamp(0, 1)
    out8, gt8, in8 = to_u8(output), to_u8(sharp), to_u8(blurry)

    def capped_psnr(a: np.ndarray, b: np.ndarray) -> float:  # equal images: 99 dB, not inf
        return min(psnr(a, b), 99.0)

    b_in, b_out, b_gt = scores["blur_input"], scores["blur_output"], scores["blur_sharp"]
    return {
        **scores,
        "mr_gain": capped_psnr(to_u8(reblurred[:1]), in8) - capped_psnr(out8, in8),
        "mr_sharp_psnr": capped_psnr(to_u8(reblurred[1:]), gt8),
        "mr_ranked": float(b_in > b_out > b_gt),
        "mr_ratio": b_in / max(b_gt, 1e-12),
    }


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each figure over images; ``mr_ratio``'s median (a ratio's mean is ruled by
    its largest values)."""
    metrics = {k: float(np.mean([row[k] for row in rows])) for k in rows[0] if k != "name"}
    if "mr_ratio" in metrics:
        metrics["mr_ratio"] = float(np.median([row["mr_ratio"] for row in rows]))
    return metrics


def to_u8(image: torch.Tensor) -> np.ndarray:
    array = image[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return np.rint(array * 255.0).astype(np.uint8)
