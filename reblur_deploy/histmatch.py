"""Per-channel histogram matching: the last step of the paper's TTA (Algorithm A).

``match_histograms(image, reference)`` maps, for every image and channel, the source's values
through the reference's empirical quantiles with linear interpolation: the mapping of
``skimage.exposure.match_histograms(..., channel_axis=-1)`` for float images. Two paths:

* **exact** (``exact=True``, or ``match_histograms_exact``): the pure-torch reference over the
  unique values (same quantiles, same ``np.interp`` end-point rules, float64), which agrees with
  scikit-image to rounding;
* **binned** (the default, ``match_histograms_fast`` with its default tolerance): per plane a
  histogram of ``HIST_BINS`` = 8192 bins (the reference's with each bin's min, max and count
  of its min; the source's counts only), a CDF scan, a quantile-interpolated lookup table and
  one lookup per pixel, placed within its bin by value; C++ on the CPU and CUDA on a GPU
  (kernels/csrc/, dispatched by ``reblur_deploy.kernels``), or the same operations in torch when
  the extension cannot be built. Its contract:

  * bit-identical to the exact path on 8-bit images: uint8 tensors always (one level per
    bin), floats holding 8-bit levels on the CPU kernel (below);
  * otherwise within a **proven bound**: each plane's bound of |binned − exact| is computed
    from its histograms (see kernels/csrc/histmatch_common.h). On the CPU kernel, the source bins
    whose bound exceeds ``tolerance`` (default ``TOLERANCE`` = 0.5/255, half an 8-bit level)
    are refined: a bin holding one value maps exactly, and the pixels of the others are mapped
    one by one at their exact quantiles; on a plane whose values fill at most an eighth of
    the bins (8-bit levels stored as floats) every bin holding one value is mapped exactly.
    Every plane whose bound still exceeds the tolerance is recomputed with the exact path, so
    the result is always within 0.5/255 of the exact one. The bins caught so are mostly in
    sparse histogram tails: TTA's unclamped outputs at lr 3e-5 in the video mode (720p GOPRO
    frames) had 1–2 planes in 3 of 4 frames with bounds of 0.5–1.3/255, each from a few tail
    bins of two pixels, which sent the whole plane to the exact path (about 0.1–0.3 s a
    plane); mapped pixel by pixel their bounds fall to 0.3–0.46/255. The CUDA kernel and the
    torch implementation do not refine: beyond the tolerance they fall back per plane.

Other dtypes (float64, wider integers) and mixed dtypes take the exact path: the binned one
computes in float32 or uint8.
"""

from __future__ import annotations

import torch

from .errors import ConfigError, InputError, NotAvailableError

HIST_BINS = 8192
_BINNED_DTYPES = (torch.uint8, torch.float32, torch.float16, torch.bfloat16)
TOLERANCE = 0.5 / 255
# |fast − exact| ≤ bound + float32 rounding of both results (a few ulps of values of order 1)
ROUNDING_SLACK = 1e-6


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


def _check(image: torch.Tensor, reference: torch.Tensor, name: str = "match_histograms") -> None:
    if image.dim() != 4 or reference.dim() != 4 or image.shape[:2] != reference.shape[:2]:
        raise InputError(
            f"{name} needs N×C×H×W tensors with equal N and C, got "
            f"{tuple(image.shape)} and {tuple(reference.shape)}"
        )
    if image.numel() == 0 or reference.numel() == 0:
        raise InputError(f"{name} got an empty tensor")


def match_histograms(
    image: torch.Tensor, reference: torch.Tensor, *, exact: bool = False
) -> torch.Tensor:
    """Match each channel of each image in ``image`` (N×C×H×W) to ``reference`` (N×C×h×w).

    The two may differ in H×W but not in N or C. Returns a tensor of ``image``'s dtype and
    device. By default through the binned kernels, within 0.5/255 of the exact mapping (and
    identical to it on 8-bit data); ``exact=True`` computes the exact mapping (about 70×
    slower on a 720p frame on the CPU). Not differentiable (a lookup through sorted values).
    uint8 results are the mapped values truncated, as scikit-image returns them for uint8
    images: half a level lower on average than rounding; match floats and round for an
    unbiased 8-bit result.
    """
    if exact or image.dtype != reference.dtype or image.dtype not in _BINNED_DTYPES:
        return match_histograms_exact(image, reference)
    return match_histograms_fast(image, reference)


def match_histograms_exact(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """The exact mapping, scikit-image's to rounding (see the module's docstring)."""
    _check(image, reference)
    out = torch.empty_like(image)
    with torch.no_grad():
        for n in range(image.shape[0]):
            for c in range(image.shape[1]):
                out[n, c] = _match_channel(image[n, c], reference[n, c]).to(image.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# Binned histogram matching (fast path)


def match_histograms_fast(
    image: torch.Tensor,
    reference: torch.Tensor,
    *,
    bins: int = HIST_BINS,
    tolerance: float | None = TOLERANCE,
    implementation: str | None = None,
) -> torch.Tensor:
    """Histogram matching through per-plane histograms of ``bins`` bins: exact for 8-bit data
    (see the module's docstring), otherwise within ``tolerance`` of the exact result (on the
    CPU kernel, source bins whose bound exceeds it are refined: mapped exactly where they hold
    one value, else pixel by pixel at their exact quantiles; planes whose bound still exceeds
    it are recomputed exactly; ``tolerance=None`` skips both and returns the binned result).

    Same arguments and result as ``match_histograms_exact``. uint8 and float32 tensors are
    matched as they are, other float dtypes in float32. ``implementation``: ``"ext"`` (C++/CUDA
    kernels) or ``"torch"``; by default ``reblur_deploy.kernels`` picks (``REBLUR_KERNELS``
    forces).
    """
    refine = None if tolerance is None else tolerance - ROUNDING_SLACK
    out, bound = match_histograms_binned(
        image, reference, bins=bins, implementation=implementation, refine_above=refine
    )
    if tolerance is not None:
        planes = out.view(-1, *out.shape[2:])
        source = image.reshape(planes.shape)
        target = reference.reshape(-1, *reference.shape[2:])
        for p in (bound + ROUNDING_SLACK > tolerance).nonzero().flatten().tolist():
            with torch.no_grad():
                planes[p] = _match_channel(source[p], target[p]).to(out.dtype)
    return out


def match_histograms_binned(
    image: torch.Tensor,
    reference: torch.Tensor,
    *,
    bins: int = HIST_BINS,
    implementation: str | None = None,
    refine_above: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The binned result without any fallback, and its per-plane bound of |binned − exact|
    (float64, N·C values, ``inf`` for a plane holding NaN or infinite values).
    ``refine_above``: the C++ CPU kernel refines the source bins whose bound exceeds it (see
    ``match_histograms_fast``) and reports the bound after that (the CUDA kernel and the torch
    implementation ignore it)."""
    _check(image, reference, "match_histograms_fast")
    if not 2 <= bins <= 2**20:
        raise ConfigError(f"bins must be in [2, 2^20], got {bins}")
    if image.dtype != reference.dtype:
        raise InputError(f"image and reference dtypes differ: {image.dtype}, {reference.dtype}")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise InputError(f"match_histograms_fast takes uint8 or float tensors, not {image.dtype}")
    from . import kernels

    if implementation is None:
        implementation = kernels.histmatch_impl(image.device)
    elif implementation == "ext":
        ok, why = kernels.ext_available(image.device)
        if not ok:
            raise NotAvailableError(f"the histogram-matching kernels cannot run here: {why}")
    compute = torch.uint8 if image.dtype == torch.uint8 else torch.float32
    n, c = image.shape[:2]
    source = image.detach().reshape(n * c, -1).to(compute).contiguous()
    target = reference.detach().reshape(n * c, -1).to(compute).contiguous()
    with torch.no_grad():
        if implementation == "ext":
            out = torch.empty_like(source)
            bound = torch.ops.reblur_ext.hist_match_out(source, target, bins, out, refine_above)
        elif implementation == "torch":
            out, bound = _match_binned_torch(source, target, bins)
        else:
            raise ConfigError(f"unknown implementation {implementation!r}; choose ext or torch")
    return out.view(image.shape).to(image.dtype), bound


_FLOAT_MAX = torch.finfo(torch.float32).max


def _plane_scale(lo: torch.Tensor, hi: torch.Tensor, bins: int) -> torch.Tensor:
    scale = bins / (hi - lo)
    return torch.where((hi > lo) & (scale <= _FLOAT_MAX), scale, torch.zeros_like(scale))


def _bin_coord(x: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x - lo[:, None]) * scale[:, None]


def _bin_index(f: torch.Tensor, bins: int) -> torch.Tensor:
    f = torch.where(f >= 0, f, torch.zeros_like(f)).clamp_(max=bins - 1)  # NaN -> 0
    return f.to(torch.int64)


def _bin_fraction(f: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    t = f - index.float()
    return torch.where(t >= 0, t, torch.zeros_like(t)).clamp_(max=1)  # NaN -> 0


def _flat_index(index: torch.Tensor, bins: int) -> torch.Tensor:
    planes = index.shape[0]
    return (index + torch.arange(planes, device=index.device)[:, None] * bins).reshape(-1)


def _counts(index: torch.Tensor, bins: int) -> torch.Tensor:
    flat = _flat_index(index, bins)
    return torch.bincount(flat, minlength=index.shape[0] * bins).view(-1, bins)


def _histogram(x: torch.Tensor, index: torch.Tensor, bins: int):
    """Per plane and bin: count, min, max and the number of pixels equal to the min."""
    planes = x.shape[0]
    flat = _flat_index(index, bins)
    values = x.reshape(-1)
    count = torch.bincount(flat, minlength=planes * bins)
    inf = torch.full((planes * bins,), torch.inf, device=x.device)
    low = inf.scatter_reduce(0, flat, values, "amin")
    high = (-inf).scatter_reduce(0, flat, values, "amax")
    shape = (planes, bins)
    at_min = torch.bincount(flat[values == low[flat]], minlength=planes * bins)
    return count.view(shape), low.view(shape), high.view(shape), at_min.view(shape)


def _search(x: torch.Tensor, xp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hi = torch.searchsorted(xp, x, right=True).clamp_(1, xp.shape[1] - 1)
    return hi - 1, hi


def _interp_rows(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """``_interp`` row by row (knots may repeat: a repeated knot has the same value)."""
    lo, hi = _search(x, xp)
    x_lo, x_hi = xp.gather(1, lo), xp.gather(1, hi)
    f_lo, f_hi = fp.gather(1, lo), fp.gather(1, hi)
    t = (x - x_lo) / (x_hi - x_lo)
    out = f_lo + t * (f_hi - f_lo)
    out = torch.where(x <= xp[:, :1], fp[:, :1], out)
    return torch.where(x >= xp[:, -1:], fp[:, -1:], out)


def _eps_rows(x: torch.Tensor, xp: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    lo, hi = _search(x, xp)
    inside = (x > xp.gather(1, lo)) & (x > xp[:, :1]) & (x < xp[:, -1:])
    return torch.where(inside, eps.gather(1, hi), torch.zeros_like(x))


def _match_binned_torch(source: torch.Tensor, reference: torch.Tensor, bins: int):
    """The binned algorithm in torch operations, in the kernels' order of float operations
    (kernels/csrc/histmatch_common.h): the fallback and the kernels' reference. P×N in, P×N out."""
    uint8 = source.dtype == torch.uint8
    src, ref = source.float() + 0.0, reference.float() + 0.0  # + 0.0: -0.0 becomes +0.0
    planes, n_src, n_ref = src.shape[0], src.shape[1], ref.shape[1]
    lo_s, hi_s = src.aminmax(dim=1)
    lo_r, hi_r = ref.aminmax(dim=1)
    finite = torch.stack([lo_s, hi_s, lo_r, hi_r]).isfinite().all(0)
    lo_s, hi_s, lo_r, hi_r = (v + 0.0 for v in (lo_s, hi_s, lo_r, hi_r))
    scale_s = _plane_scale(lo_s, hi_s, bins)
    coord_s = _bin_coord(src, lo_s, scale_s)
    index_s = _bin_index(coord_s, bins)
    index_r = _bin_index(_bin_coord(ref, lo_r, _plane_scale(lo_r, hi_r, bins)), bins)
    count_s = _counts(index_s, bins)
    count_r, min_r, max_r, cmin_r = _histogram(ref, index_r, bins)

    # Reference knots, two slots per bin: (C_{b-1} + cmin, min) if the bin holds several
    # values, (C_b, max) if it holds any. Unused slots repeat the knot before them.
    cum_r = count_r.cumsum(1)
    prev_r = cum_r - count_r
    filled, multi = count_r > 0, (count_r > 0) & (min_r < max_r)
    q = torch.stack([(prev_r + cmin_r).double() / n_ref, cum_r.double() / n_ref], 2)
    f = torch.stack([min_r.double(), max_r.double()], 2)
    e = torch.stack([torch.zeros_like(f[..., 0]), torch.where(multi, f[..., 1] - f[..., 0], 0)], 2)
    valid = torch.stack([multi, filled], 2).view(planes, 2 * bins)
    q, f, e = (v.view(planes, 2 * bins) for v in (q, f, e))
    first = torch.where(valid, q, torch.inf).amin(1, keepdim=True)
    q = torch.where(valid, q, -torch.inf).cummax(1).values
    f = torch.where(valid, f, -torch.inf).cummax(1).values
    lead = q == -torch.inf
    q = torch.where(lead, first, q)
    f = torch.where(lead, lo_r.double()[:, None], f)

    # Source bins: map the quantiles of their lowest and highest pixel through the knots
    # (source_bin); where every bin holds one value (one_value_per_bin) a bin maps as a whole
    # to its highest quantile's value.
    cum_s = count_s.cumsum(1)
    q_hi = cum_s.double() / n_src
    q_lo = (cum_s - count_s + 1).double() / n_src
    v_hi, v_lo = _interp_rows(q_hi, q, f), _interp_rows(q_lo, q, f)
    eps_hi, eps_lo = _eps_rows(q_hi, q, e), _eps_rows(q_lo, q, e)
    one_value = ((lo_s == hi_s) | ((scale_s >= 2.0) & uint8))[:, None]  # one_value_per_bin
    err = torch.where(one_value, eps_hi, (v_hi - v_lo) + torch.maximum(eps_hi, eps_lo))
    bound = torch.where(count_s > 0, err, 0.0).amax(1)
    bound = torch.where(finite, bound, torch.inf)
    if uint8:
        v_lo, v_hi = (v.clamp(0, 255).to(torch.uint8).float() for v in (v_lo, v_hi))
    lut_a = torch.where(one_value, v_hi.float(), v_lo.float())
    lut_d = torch.where(one_value, 0.0, v_hi.float() - lut_a)
    t = _bin_fraction(coord_s, index_s)
    out = lut_a.gather(1, index_s) + t * lut_d.gather(1, index_s)  # apply_lut
    return out.to(source.dtype), bound
