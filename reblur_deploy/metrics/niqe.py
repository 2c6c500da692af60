"""NIQE (Mittal, Soundararajan, Bovik, "Making a Completely Blind Image Quality Analyzer",
IEEE Signal Processing Letters 2012), computed the way the MATLAB reference release computes it.

Lower is better (closer to the statistics of pristine natural images). The steps, each chosen to
reproduce the MATLAB code that deblurring papers run (and BasicSR's port of it):

1. luma: the Y channel of MATLAB's ``rgb2ycbcr`` on the 8-bit image (BT.601, 16–235), rounded to
   integers as MATLAB's uint8 result is; no border is cropped;
2. the image is cut to a whole number of 96×96 blocks (bottom/right remainder dropped);
3. two scales: the image itself and a MATLAB-style bicubic ×0.5 resize with antialiasing
   (blocks of 48×48 there);
4. MSCN coefficients ``(I − μ) / (σ + 1)`` with μ, σ from the 7×7 Gaussian window of the model
   (σ = 7/6) and replicated borders;
5. per block 18 features: the GGD shape and scale of the MSCN coefficients (fitted, as the
   reference does, as an asymmetric GGD whose two scales are averaged), then the AGGD shape,
   mean, left and right scale of the products of each coefficient with its right, lower,
   lower-right and lower-left neighbour (circular within the block);
6. a multivariate Gaussian fitted to the 36-dimensional block features (NaN-aware mean; the
   covariance over blocks without NaN) is compared with the pristine model:
   ``sqrt((μ₁ − μ₂)ᵀ ((Σ₁ + Σ₂) / 2)⁺ (μ₁ − μ₂))``.

Everything is vectorised over blocks: a 1280×720 frame takes about a tenth of a second.
The pristine model is ``assets/metrics/niqe_pris_params.npz`` (from BasicSR, Apache-2.0).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse
from scipy.special import gammaln

from ..errors import InputError
from .distortion import to_8bit

PARAMS = Path(__file__).resolve().parents[1] / "assets" / "metrics" / "niqe_pris_params.npz"
BLOCK = 96  # block side at the first scale, as in the MATLAB release

# The AGGD shape is looked up in a table of the ratio r(α) = Γ(2/α)² / (Γ(1/α) Γ(3/α)) on the
# MATLAB reference's grid α = 0.2, 0.201, ..., 10.
_ALPHAS = np.arange(0.2, 10.001, 0.001)
_RATIOS = np.exp(2 * gammaln(2 / _ALPHAS) - gammaln(1 / _ALPHAS) - gammaln(3 / _ALPHAS))
# (row, column) neighbour shifts of the pairwise products: right, down, down-right, down-left.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


@functools.lru_cache(maxsize=1)
def pristine_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (36,), covariance (36, 36), 7×7 Gaussian window) of the pristine-image model."""
    with np.load(PARAMS, allow_pickle=False) as data:
        return (
            data["mu_pris_param"].reshape(-1).astype(np.float64),
            data["cov_pris_param"].astype(np.float64),
            data["gaussian_window"].astype(np.float64),
        )


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Y of MATLAB's ``rgb2ycbcr`` for an H×W×3 uint8 RGB image, as float64 integers 16–235."""
    rgb = image.astype(np.float64)
    y = 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0
    return np.floor(y + 0.5)  # MATLAB rounds halves away from zero (all values are positive)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = −0.5 (MATLAB's "bicubic")."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = 1.5 * ax3 - 2.5 * ax2 + 1.0
    far = -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
    return np.where(ax <= 1, near, np.where(ax <= 2, far, 0.0))


@functools.lru_cache(maxsize=32)
def resize_matrix(n_in: int, n_out: int, scale: float, antialias: bool = True) -> sparse.csr_array:
    """The (n_out × n_in) matrix of MATLAB's bicubic ``imresize`` along one axis.

    Output sample x (1-based) sits at u = x/scale + (1 − 1/scale)/2 in input coordinates. When
    shrinking with antialiasing the kernel is stretched by 1/scale (and its height scaled by
    ``scale``), so it low-passes before sampling. Taps outside the image are mirrored with the
    edge sample repeated (MATLAB's "symmetric" padding); each row is normalised to sum to 1.
    """
    stretch = antialias and scale < 1
    width = 4.0 / scale if stretch else 4.0
    u = np.arange(1, n_out + 1, dtype=np.float64) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    index = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    distance = u[:, None] - index
    weights = scale * _cubic(distance * scale) if stretch else _cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    period = 2 * n_in
    zero_based = np.mod(index.astype(np.int64) - 1, period)
    zero_based = np.where(zero_based >= n_in, period - 1 - zero_based, zero_based)
    rows = np.repeat(np.arange(n_out), taps)
    matrix = sparse.coo_array(
        (weights.ravel(), (rows, zero_based.ravel())), shape=(n_out, n_in)
    )  # duplicate (row, column) entries from mirrored taps are summed
    return matrix.tocsr()


def imresize(image: np.ndarray, scale: float, antialias: bool = True) -> np.ndarray:
    """MATLAB ``imresize(image, scale, 'bicubic')`` of a 2-D float array (output ⌈size·scale⌉)."""
    h, w = image.shape
    rows = resize_matrix(h, int(np.ceil(h * scale)), scale, antialias)
    cols = resize_matrix(w, int(np.ceil(w * scale)), scale, antialias)
    return np.asarray((cols @ (rows @ image).T).T)


def mscn(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (I − μ) / (σ + 1), replicated borders.

    Returned in float32, computed as BasicSR's port computes them: the local mean and mean
    square are filtered in double precision and stored as float32, the rest is float32
    arithmetic. Precision matters here: in flat or clipped areas σ ≈ 0 and the coefficients are
    rounding noise whose fitted shape still enters the features; double precision throughout
    moves NIQE of GOPRO frames with saturated sky by up to 0.16 from the published values.
    """
    # The window is an outer product g gᵀ (normalised to sum 1): filter columns, then rows.
    g = window.sum(axis=1) / np.sqrt(window.sum())

    def local_mean(x: np.ndarray) -> np.ndarray:
        x = ndimage.correlate1d(x, g, axis=0, mode="nearest")
        return ndimage.correlate1d(x, g, axis=1, mode="nearest").astype(np.float32)

    image = image.astype(np.float32)
    wide = image.astype(np.float64)
    mu = local_mean(wide)
    sigma = np.sqrt(np.abs(local_mean(wide * wide) - mu * mu))
    return (image - mu) / (sigma + np.float32(1.0))


def _blocks(image: np.ndarray, size: int) -> np.ndarray:
    """An (nh·size × nw·size) array → (nh·nw, size, size) non-overlapping blocks."""
    nh, nw = image.shape[0] // size, image.shape[1] // size
    return image.reshape(nh, size, nw, size).swapaxes(1, 2).reshape(nh * nw, size, size)


def _aggd(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric GGD fit (moment matching) of each row: shape α, left scale, right scale.

    A row without negative (or positive) samples has an undefined side: its scales are NaN and,
    as in the MATLAB reference (whose ``min`` of an all-NaN vector returns the first index), its
    shape is the first grid value 0.2.
    """
    squared = samples * samples
    neg, pos = samples < 0, samples > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt((squared * neg).sum(axis=1) / neg.sum(axis=1))
        right = np.sqrt((squared * pos).sum(axis=1) / pos.sum(axis=1))
        g = left / right
        r = np.abs(samples).mean(axis=1) ** 2 / squared.mean(axis=1)
        r_norm = r * (g**3 + 1) * (g + 1) / (g * g + 1) ** 2
    # Nearest table entry (the table rises monotonically; ties go to the smaller α).
    hi = np.clip(np.searchsorted(_RATIOS, r_norm), 1, len(_RATIOS) - 1)
    lo = hi - 1
    pick = np.where((r_norm - _RATIOS[lo]) ** 2 <= (_RATIOS[hi] - r_norm) ** 2, lo, hi)
    pick = np.where(np.isnan(r_norm), 0, pick)
    alpha = _ALPHAS[pick]
    to_beta = np.exp(0.5 * (gammaln(1 / alpha) - gammaln(3 / alpha)))
    return alpha, left * to_beta, right * to_beta


def block_features(blocks: np.ndarray) -> np.ndarray:
    """(n, s, s) MSCN blocks → (n, 18) NIQE features."""
    n = blocks.shape[0]
    blocks = blocks.astype(np.float64)
    alpha, beta_l, beta_r = _aggd(blocks.reshape(n, -1))
    features = [alpha, (beta_l + beta_r) / 2]
    for shift in _SHIFTS:
        products = blocks * np.roll(blocks, shift, axis=(1, 2))
        alpha, beta_l, beta_r = _aggd(products.reshape(n, -1))
        mean = (beta_r - beta_l) * np.exp(gammaln(2 / alpha) - gammaln(1 / alpha))
        features += [alpha, mean, beta_l, beta_r]
    return np.stack(features, axis=1)


def niqe_of_luma(luma: np.ndarray) -> float:
    """NIQE of a 2-D luma array with values in 0–255 (see the module docstring)."""
    mu_pris, cov_pris, window = pristine_model()
    h, w = luma.shape
    if h < BLOCK or w < BLOCK:
        raise InputError(f"NIQE needs an image of at least {BLOCK}×{BLOCK} pixels, got {w}×{h}")
    image = luma[: h - h % BLOCK, : w - w % BLOCK].astype(np.float64)
    per_scale = []
    for size in (BLOCK, BLOCK // 2):
        per_scale.append(block_features(_blocks(mscn(image, window), size)))
        if size == BLOCK:
            image = imresize(image / 255.0, 0.5) * 255.0
    features = np.concatenate(per_scale, axis=1)
    complete = features[~np.isnan(features).any(axis=1)]
    if len(complete) < 2:
        raise InputError(
            "NIQE is undefined for this image: fewer than two of its 96×96 blocks have texture "
            "(flat or saturated image?)"
        )
    with np.errstate(invalid="ignore"):
        mu = np.nanmean(features, axis=0)
    cov = np.cov(complete, rowvar=False)
    diff = mu_pris - mu
    distance = diff @ np.linalg.pinv((cov_pris + cov) / 2) @ diff
    return float(np.sqrt(distance))


def niqe(image: np.ndarray) -> float:
    """NIQE of an 8-bit image (H×W×3 RGB, or H×W gray used as the luma directly); lower is better.

    16-bit images are reduced to 8 bits first and an alpha channel is ignored.
    """
    image = to_8bit(image)
    luma = image.astype(np.float64) if image.ndim == 2 else rgb_to_y(image)
    return niqe_of_luma(luma)
