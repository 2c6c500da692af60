"""GOPRO-style synthetic blur from any sharp image.

GOPRO (Nah et al., CVPR 2017) made each blurry frame by averaging 7–13 consecutive frames of a
240 fps video in linear light; the sharp frame is the middle one. Here the consecutive frames
are made by warping one sharp image along a random, smooth camera trajectory:

* ``n`` sub-frames, ``n`` drawn uniformly from ``frames`` (default 7 to 15), at times
  t_k = k / (n − 1) − 1/2 (the exposure runs from −1/2 to 1/2);
* the camera motion is an in-plane rotation θ(t), a translation (x(t), y(t)) and optionally a
  zoom log s(t), each a random cubic polynomial of t (smooth, not a random walk), shifted so
  that the middle sub-frame k = n // 2 is the identity and scaled so that the motion over the
  exposure spans a random fraction (0.1 to 1, uniform) of its maximum: ``max_shift`` pixels
  (the diameter of the translation path), ``max_rotation`` degrees, ``max_zoom`` (relative);
* each sub-frame is the sharp image in linear light (sRGB values ** 2.2) warped by its affine
  map about the centre of the crop (bilinear, mirrored borders); the blurry image is the mean
  of the sub-frames raised to 1 / 2.2; optional Gaussian noise of σ uniform in [0, ``noise``]
  is added to it; for an 8-bit source it is rounded to 8 bits like a real frame;
* the sharp target is the middle sub-frame, which is the source image itself (identity map, so
  no interpolation touches it); with ``soften`` > 0 the source is first blurred by a Gaussian
  of σ uniform in [0, soften] pixels (the softness of a real camera's optics and processing,
  which its sharp frames have too).

Everything random comes from the ``numpy.random.Generator`` passed in, so a pair is a pure
function of the image, the box and the seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from reblur_deploy.errors import ConfigError

GAMMA = 2.2


@dataclass(frozen=True)
class BlurParams:
    """The knobs of the synthetic blur (see the module docstring)."""

    frames: tuple[int, int] = (7, 15)
    max_shift: float = 16.0
    max_rotation: float = 1.0
    max_zoom: float = 0.0
    noise: float = 0.0
    soften: float = 0.0

    def __post_init__(self):
        lo, hi = self.frames
        if not 2 <= lo <= hi:
            raise ConfigError(f"synthetic blur needs 2 ≤ min ≤ max sub-frames, got {self.frames}")
        if min(self.max_shift, self.max_rotation, self.max_zoom, self.noise, self.soften) < 0:
            raise ConfigError("synthetic blur magnitudes must be ≥ 0")
        if self.max_zoom >= 0.5:
            raise ConfigError(f"synthetic max_zoom must be < 0.5, got {self.max_zoom}")

    def to_dict(self) -> dict:
        return {**asdict(self), "frames": list(self.frames)}

    def margin(self, height: int, width: int) -> int:
        """Pixels a sub-frame can move at the border of an h×w crop (the context to read)."""
        radius = 0.5 * math.hypot(height, width)
        turn = 2 * math.sin(math.radians(self.max_rotation) / 2)
        return math.ceil(self.max_shift + radius * (turn + self.max_zoom)) + 2


def _curve(rng: np.random.Generator, t: np.ndarray, middle: int, dims: int) -> np.ndarray:
    """A random cubic polynomial of t (len(t) × dims), zero at t[middle], unit diameter."""
    coefficients = rng.normal(size=(3, dims)) * np.array([[1.0], [0.5], [0.3]])
    powers = np.stack([t, t**2, t**3], axis=1)  # n × 3
    curve = powers @ coefficients
    curve -= curve[middle]
    diameter = float(np.linalg.norm(curve[:, None] - curve[None], axis=-1).max())
    return curve / diameter if diameter > 1e-12 else curve


def sample_trajectory(rng: np.random.Generator, params: BlurParams) -> np.ndarray:
    """n × 4 motion parameters per sub-frame: angle (radians), dx, dy (pixels), log scale.

    Row ``n // 2`` (the sharp frame) is all zeros.
    """
    n = int(rng.integers(params.frames[0], params.frames[1] + 1))
    t = np.linspace(-0.5, 0.5, n)
    middle = n // 2
    shift = _curve(rng, t, middle, 2) * params.max_shift * rng.uniform(0.1, 1.0)
    angle = _curve(rng, t, middle, 1)[:, 0] * math.radians(params.max_rotation)
    angle *= rng.uniform(0.1, 1.0)
    zoom = _curve(rng, t, middle, 1)[:, 0] * params.max_zoom * rng.uniform(0.1, 1.0)
    return np.column_stack([angle, shift, np.log1p(zoom)])


def _affine(motion: np.ndarray, center: tuple[float, float]) -> np.ndarray:
    """2×3 map of a rotation by angle and scale about ``center`` followed by a shift."""
    angle, dx, dy, log_scale = motion
    s = math.exp(log_scale)
    c, si = s * math.cos(angle), s * math.sin(angle)
    cx, cy = center
    return np.array(
        [[c, -si, cx - c * cx + si * cy + dx], [si, c, cy - si * cx - c * cy + dy]],
        dtype=np.float64,
    )


def _region(image: np.ndarray, top: int, left: int, h: int, w: int, margin: int) -> np.ndarray:
    """image[top − m : top + h + m, left − m : left + w + m], mirrored where it leaves the image."""
    height, width = image.shape[:2]
    y0, y1, x0, x1 = top - margin, top + h + margin, left - margin, left + w + margin
    inside = image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    pads = ((max(-y0, 0), max(y1 - height, 0)), (max(-x0, 0), max(x1 - width, 0)), (0, 0))
    if any(p for pair in pads for p in pair):
        inside = np.pad(inside, pads, mode="symmetric")
    return inside


def to_linear(image: np.ndarray) -> np.ndarray:
    """sRGB-like values in [0, 1] → linear light (the inverse of gamma 2.2)."""
    return np.power(image, GAMMA, dtype=np.float32)


def to_gamma(linear: np.ndarray) -> np.ndarray:
    """Linear light → values in [0, 1] with gamma 2.2."""
    return np.power(linear, 1 / GAMMA, dtype=np.float32)


def average_linear(frames) -> np.ndarray:
    """The mean of float frames in [0, 1] taken in linear light: (mean of x^2.2)^(1/2.2)."""
    total = None
    count = 0
    for frame in frames:
        linear = to_linear(frame)
        total = linear if total is None else total + linear
        count += 1
    if total is None:
        raise ConfigError("average_linear needs at least one frame")
    return to_gamma(total / count)


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 / uint16 H×W×3 → float32 in [0, 1]."""
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    return image.astype(np.float32) / scale


def _check_image(image: np.ndarray, who: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.uint16):
        raise ConfigError(f"{who} takes H×W×3 uint8/uint16 RGB, got {image.dtype} {image.shape}")


def _exposure(
    image: np.ndarray,
    rng: np.random.Generator,
    params: BlurParams,
    box: tuple[int, int, int, int] | None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """The sub-frames of one exposure in linear light, cropped to ``box``, and the sharp crop
    (the middle sub-frame, in [0, 1] with the image's gamma)."""
    top, left, h, w = box or (0, 0, image.shape[0], image.shape[1])
    trajectory = sample_trajectory(rng, params)
    margin = params.margin(h, w)
    region = to_float(_region(image, top, left, h, w, margin))
    if params.soften > 0:  # a lens's and ISP's softness: part of the scene, blurred or not
        sigma = rng.uniform(0.0, params.soften)
        if sigma > 0.05:
            region = cv2.GaussianBlur(region, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    linear = to_linear(region)
    size = (region.shape[1], region.shape[0])
    center = ((size[0] - 1) / 2, (size[1] - 1) / 2)
    inner = (slice(margin, margin + h), slice(margin, margin + w))
    frames = []
    for motion in trajectory:
        if not motion.any():
            frames.append(linear[inner])
            continue
        warped = cv2.warpAffine(
            linear,
            _affine(motion, center),
            size,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
        frames.append(warped[inner])
    return frames, region[inner]


def _finish(blurry: np.ndarray, image_dtype: np.dtype) -> np.ndarray:
    blurry = np.clip(blurry, 0.0, 1.0)
    if image_dtype == np.uint8:  # an 8-bit source gives an 8-bit frame, like a camera's
        blurry = np.round(blurry * 255.0) / 255.0
    return np.ascontiguousarray(blurry, dtype=np.float32)


def blur_pair(
    frames: list[np.ndarray], sharp: np.ndarray, rng: np.random.Generator, noise: float, dtype
) -> tuple[np.ndarray, np.ndarray]:
    """(blurry, sharp) from one exposure: its sub-frames in linear light are averaged (GOPRO's
    recipe), Gaussian noise of σ uniform in [0, ``noise``] is added, and the frame is rounded to
    8 bits when ``dtype`` (the source's) is uint8."""
    blurry = to_gamma(sum(frames) / len(frames))
    if noise > 0:
        sigma = rng.uniform(0.0, noise)
        blurry = blurry + rng.normal(0.0, sigma, blurry.shape).astype(np.float32)
    return _finish(blurry, dtype), np.ascontiguousarray(sharp)


def reblur_pair(
    frames: list[np.ndarray],
    sharp: np.ndarray,
    rng: np.random.Generator,
    noise: float,
    dtype,
    sharp_share: float = 0.25,
    factor: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) from one exposure that teaches a reblurring module what blur is: the
    input averages the central n / ``factor`` sub-frames (odd, centred on the sharp middle
    one), the target all n, the same motion ``factor`` times longer. Every blur is lengthened
    by the same factor, so what MR changes grows with the blur an image has: a blurry frame is
    changed more than a partly deblurred one; with probability ``sharp_share`` the pair is
    (S, S): an image with no blur has no motion to lengthen and must stay as it is. The same
    noise (σ uniform in [0, ``noise``]) goes on input and target, as a sensor adds it after
    the blur: MR learns to keep noise, which is not blur."""
    sharp = np.ascontiguousarray(sharp)
    n = len(frames)
    if rng.uniform() < sharp_share:
        x = y = sharp
    else:
        middle = n // 2
        half = max(1, round((n / factor - 1) / 2))  # m = 2·half + 1 sub-frames
        half = min(half, middle, n - 1 - middle)
        x = to_gamma(sum(frames[middle - half : middle + half + 1]) / (2 * half + 1))
        y = to_gamma(sum(frames) / n)
    if noise > 0:
        grain = rng.normal(0.0, rng.uniform(0.0, noise), x.shape).astype(np.float32)
        x, y = x + grain, y + grain
    return _finish(x, dtype), _finish(y, dtype)


def synthesize(
    image: np.ndarray,
    rng: np.random.Generator,
    params: BlurParams | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A (blurry, sharp) pair of float32 h×w×3 arrays in [0, 1] from an 8/16-bit RGB image.

    ``box = (top, left, h, w)`` selects the crop to return (default: the whole image); the
    pixels around it are used as context so that motion does not pull in a border.
    """
    params = params or BlurParams()
    _check_image(image, "synthesize")
    return blur_pair(*_exposure(image, rng, params, box), rng, params.noise, image.dtype)


def synthesize_reblur(
    image: np.ndarray,
    rng: np.random.Generator,
    params: BlurParams | None = None,
    box: tuple[int, int, int, int] | None = None,
    sharp_share: float = 0.25,
    factor: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``reblur_pair`` of one synthetic exposure of ``image`` (as ``synthesize``): a pair that
    teaches a reblurring module what blur is, without any MD."""
    params = params or BlurParams()
    _check_image(image, "synthesize_reblur")
    frames, sharp = _exposure(image, rng, params, box)
    return reblur_pair(frames, sharp, rng, params.noise, image.dtype, sharp_share, factor)
