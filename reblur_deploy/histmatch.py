"""Per-channel histogram matching: the last step of the paper's TTA (Algorithm A).

``match_histograms`` is the pure-torch reference. For every image and channel it maps the
source's unique values through the reference's empirical quantiles with linear interpolation,
which is exactly what ``skimage.exposure.match_histograms(..., channel_axis=-1)`` does for float
images (same unique-value quantiles, same ``np.interp`` end-point rules). Quantiles and
interpolation run in float64 so that the result agrees with scikit-image to rounding.
"""

from __future__ import annotations

import torch

from .errors import InputError


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``numpy.interp`` for increasing ``xp``: linear inside, clamped to the ends outside."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    hi = torch.searchsorted(xp, x, right=True).clamp_(1, xp.numel() - 1)
    lo = hi - 1
    t = (x - xp[lo]) / (xp[hi] - xp[lo])
    out = fp[lo] + t * (fp[hi] - fp[lo])
    out = torch.where(x <= xp[0], fp[0], out)
    return torch.where(x >= xp[-1], fp[-1], out)


def _match_channel(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    _, src_index, src_counts = torch.unique(
        source.reshape(-1), sorted=True, return_inverse=True, return_counts=True
    )
    ref_values, ref_counts = torch.unique(reference.reshape(-1), sorted=True, return_counts=True)
    src_quantiles = src_counts.cumsum(0, dtype=torch.float64) / source.numel()
    ref_quantiles = ref_counts.cumsum(0, dtype=torch.float64) / reference.numel()
    mapped = _interp(src_quantiles, ref_quantiles, ref_values.double())
    return mapped[src_index].reshape(source.shape)


def match_histograms(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Match each channel of each image in ``image`` (N×C×H×W) to ``reference`` (N×C×h×w).

    The two may differ in H×W but not in N or C. Returns a tensor of ``image``'s dtype and
    device. Not differentiable (a lookup through sorted values).
    """
    if image.dim() != 4 or reference.dim() != 4 or image.shape[:2] != reference.shape[:2]:
        raise InputError(
            "match_histograms needs N×C×H×W tensors with equal N and C, got "
            f"{tuple(image.shape)} and {tuple(reference.shape)}"
        )
    if image.numel() == 0 or reference.numel() == 0:
        raise InputError("match_histograms got an empty tensor")
    out = torch.empty_like(image)
    with torch.no_grad():
        for n in range(image.shape[0]):
            for c in range(image.shape[1]):
                out[n, c] = _match_channel(image[n, c], reference[n, c]).to(image.dtype)
    return out
