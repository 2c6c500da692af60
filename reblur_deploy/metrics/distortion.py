"""PSNR and SSIM on 8-bit RGB images, as the deblurring literature reports them.

* PSNR: ``10·log10(255² / MSE)`` with the MSE over all pixels and the three channels of the
  8-bit images (no border crop, no luma conversion: the GOPRO convention).
* SSIM: ``skimage.metrics.structural_similarity`` on each RGB channel, averaged over the
  channels (the paper's appendix), with the settings of the reference implementations of the
  field (Wang et al. 2004): Gaussian weights with σ = 1.5, population (not sample)
  covariance, K1 = 0.01, K2 = 0.03, data range 255.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from ..errors import InputError

SSIM_SETTINGS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def to_8bit(image: np.ndarray) -> np.ndarray:
    """Check an image array and return it as 8-bit H×W×3 RGB (or H×W gray).

    uint16 is rounded to 8 bits (÷257) and an alpha channel is dropped; other dtypes are refused
    because a float image's range is ambiguous.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected a numpy image array, got {type(image).__name__}")
    if image.dtype == np.uint16:
        image = np.rint(image / 257.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(
            f"metrics take 8-bit (or 16-bit) images, got dtype {image.dtype}; "
            "convert floats in [0, 1] with np.rint(x * 255).astype(np.uint8)"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise InputError(f"expected an H×W×3 RGB or H×W gray image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"empty image (shape {image.shape})")
    return image


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = to_8bit(pred), to_8bit(gt)
    if pred.shape != gt.shape:
        raise InputError(f"prediction and ground truth differ in shape: {pred.shape} vs {gt.shape}")
    return pred, gt


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR in dB of two 8-bit images of equal shape (inf when they are identical)."""
    pred, gt = _pair(pred, gt)
    mse = np.mean((pred.astype(np.float64) - gt.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """SSIM of two 8-bit images: per RGB channel (settings above), averaged over channels."""
    pred, gt = _pair(pred, gt)
    if min(pred.shape[:2]) < 7:
        raise InputError(f"SSIM needs images of at least 7×7 pixels, got {pred.shape[:2]}")
    if pred.ndim == 2:
        pred, gt = pred[..., None], gt[..., None]
    values = [
        structural_similarity(pred[..., c], gt[..., c], data_range=255, **SSIM_SETTINGS)
        for c in range(pred.shape[2])
    ]
    return float(np.mean(values))
