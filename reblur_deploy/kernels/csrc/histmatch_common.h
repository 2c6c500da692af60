// Binned histogram matching: the arithmetic shared by the CPU (histmatch.cpp) and CUDA
// (histmatch_cuda.cu) kernels. reblur_deploy/histmatch.py (`_match_binned_torch`) performs the
// same operations in the same order in torch, so the three agree bit for bit.
//
// Per (image, channel) plane, for the source and the reference:
//   lo, hi  = the plane's min and max;   scale = bins / (hi - lo)  (0 for a constant plane)
//   f(x)    = (x - lo) * scale, the pixel's coordinate on the bin axis  (float32 arithmetic)
//   bin(x)  = trunc(clamp(f, 0, bins - 1)),  t(x) = clamp(f - bin, 0, 1)  (its place in the bin)
// The reference's histogram holds per bin its count, min, max and cmin = how many pixels equal
// the bin's min; the source's holds counts only (a third of the work per pixel; see
// docs/BENCHMARKS.md). C_b = pixels in bins <= b, N = the plane's pixels.
//
// Reference knots (skimage's quantile mapping uses one knot per unique value; we use at most
// two per bin, both of them knots of the exact mapping):
//   a bin holding one value v:  (C_b / N, v)
//   a bin holding several:      ((C_{b-1} + cmin_b) / N, min_b)  and  (C_b / N, max_b)
// Where every bin holds one value (8-bit images: levels 1/255 apart, bins at most range/8192
// wide with the default 8192 bins) these are the exact mapping's knots.
//
// Source bins: a pixel of bin b has the exact quantile (C_{b-1} + #{pixels of b <= x}) / N, in
// [q_lo, q_hi] = [(C_{b-1} + 1) / N, C_b / N]. Both ends are mapped through the knots (numpy.interp,
// written exactly as the torch reference writes it) to v_lo and v_hi, and a pixel is placed
// between the two by its place in the bin: out = a + t * d, a = v_lo, d = v_hi - v_lo (float).
// A bin of one pixel has q_lo = q_hi, so d = 0: sparse tails map exactly. Where every bin holds
// one value (constant planes; uint8 planes whose scale is at least 2) a bin maps as a whole to
// v_hi (d = 0), exactly.
//
// Error bound, per plane (returned beside the output): every pixel's exact result lies between
// the exact mapping of q_lo and of q_hi, and ours between v_lo and v_hi; the knots' mapping
// differs from the exact one only strictly inside a multi-valued reference bin, by at most that
// bin's max - min. So
//   |ours - exact| <= max over source bins of (v_hi - v_lo) + eps(q_lo, q_hi)
// (plus float32 rounding), with eps the max - min of a multi-valued reference bin that the
// quantile falls strictly inside, else 0. The CPU kernel can refine the bins beyond a bound
// (histmatch.cpp, refine_plane); the Python wrapper recomputes planes whose bound still exceeds
// its tolerance with the exact reference.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define HM_HD __host__ __device__ __forceinline__
#else
#define HM_HD inline
#endif

namespace reblur_hm {

// IEEE operations that no compiler may fuse into an FMA (the torch reference never fuses, and
// a fused multiply-add rounds differently). Host code is compiled with -ffp-contract=off.
#if defined(__CUDA_ARCH__)
HM_HD float fadd(float a, float b) { return __fadd_rn(a, b); }
HM_HD float fsub(float a, float b) { return __fsub_rn(a, b); }
HM_HD float fmul(float a, float b) { return __fmul_rn(a, b); }
HM_HD double dadd(double a, double b) { return __dadd_rn(a, b); }
HM_HD double dsub(double a, double b) { return __dsub_rn(a, b); }
HM_HD double dmul(double a, double b) { return __dmul_rn(a, b); }
HM_HD double ddiv(double a, double b) { return __ddiv_rn(a, b); }
#else
HM_HD float fadd(float a, float b) { return a + b; }
HM_HD float fsub(float a, float b) { return a - b; }
HM_HD float fmul(float a, float b) { return a * b; }
HM_HD double dadd(double a, double b) { return a + b; }
HM_HD double dsub(double a, double b) { return a - b; }
HM_HD double dmul(double a, double b) { return a * b; }
HM_HD double ddiv(double a, double b) { return a / b; }
#endif

constexpr float kFloatMax = 3.402823466e38f;

// -0.0 -> +0.0, so that equal values compare and bin alike (torch.unique treats them as one).
HM_HD float canonical(float x) { return fadd(x, 0.0f); }

// bins / (hi - lo), or 0 when the plane is constant or its range is not finite.
HM_HD float plane_scale(float lo, float hi, int bins) {
  const float s = static_cast<float>(bins) / fsub(hi, lo);
  return (hi > lo && s <= kFloatMax) ? s : 0.0f;
}

// A pixel's coordinate on the plane's bin axis: bin b holds [b, b + 1) (the top bin up to bins).
HM_HD float bin_coord(float x, float lo, float scale) { return fmul(fsub(x, lo), scale); }

HM_HD int bin_index(float f, int bins) {
  f = f >= 0.0f ? f : 0.0f;  // NaN -> 0 too: never an index outside the histogram
  const float top = static_cast<float>(bins - 1);
  f = f <= top ? f : top;
  return static_cast<int>(f);
}

HM_HD int bin_of(float x, float lo, float scale, int bins) {
  return bin_index(bin_coord(x, lo, scale), bins);
}

// Where coordinate f lies in its bin b, in [0, 1] (f - b is exact: f is within [b, 2b] or b = 0).
HM_HD float bin_fraction(float f, int b) {
  float t = fsub(f, static_cast<float>(b));
  t = t >= 0.0f ? t : 0.0f;  // NaN -> 0
  return t <= 1.0f ? t : 1.0f;
}

// First index with q[i] > x, clamped to [1, n - 1] (torch.searchsorted(right=True) + clamp).
HM_HD int upper_knot(double x, const double* q, int n) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (q[mid] > x) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo < 1 ? 1 : (lo > n - 1 ? n - 1 : lo);
}

// numpy.interp for increasing knots, in the reference's exact arithmetic; h = upper_knot(x).
HM_HD double interp_at(double x, const double* q, const double* f, int n, int h) {
  if (n == 1) return f[0];
  if (x >= q[n - 1]) return f[n - 1];
  if (x <= q[0]) return f[0];
  const int l = h - 1;
  const double t = ddiv(dsub(x, q[l]), dsub(q[h], q[l]));
  return dadd(f[l], dmul(t, dsub(f[h], f[l])));
}

HM_HD double interp(double x, const double* q, const double* f, int n) {
  return interp_at(x, q, f, n, n == 1 ? 1 : upper_knot(x, q, n));
}

// How far the binned mapping may be from the exact one at quantile x: eps[h] when x lies strictly
// between the two knots of one multi-valued reference bin (h its upper knot), else 0.
HM_HD double eps_at_knot(double x, const double* q, const double* eps, int n, int h) {
  if (n == 1 || x <= q[0] || x >= q[n - 1]) return 0.0;
  return x > q[h - 1] ? eps[h] : 0.0;
}

HM_HD double eps_at(double x, const double* q, const double* eps, int n) {
  return eps_at_knot(x, q, eps, n, n == 1 ? 1 : upper_knot(x, q, n));
}

// upper_knot for non-decreasing queries, walking forward: O(knots + queries) for a whole plane.
struct KnotCursor {
  const double* q;
  int n;
  int k;
  HM_HD int upper(double x) {
    while (k < n && q[k] <= x) ++k;
    return k < 1 ? 1 : (k > n - 1 ? n - 1 : k);
  }
};

// The value a source bin's LUT holds for a mapped value: the output dtype's conversion of the
// double (uint8: truncation, as torch's .to(torch.uint8)).
template <bool kUint8>
HM_HD float out_value(double v) {
  if (kUint8) {
    const double c = v < 0.0 ? 0.0 : (v > 255.0 ? 255.0 : v);
    return static_cast<float>(static_cast<uint8_t>(c));
  }
  return static_cast<float>(v);
}

// One source bin's lookup entry: a pixel of the bin at fraction t becomes a + t * d.
struct LutEntry {
  float a, d;
};

// The entry and error bound of a source bin of `count` pixels above `below` pixels of lower bins
// (of n in all): its quantiles q_lo = (below + 1) / n and q_hi = (below + count) / n mapped
// through the knots q, f (eps: their error) to v_lo <= v_hi, found by the cursor (queries of
// successive bins never decrease). one_value: the bin is known to hold one value, whose exact
// quantile is q_hi.
template <bool kUint8>
HM_HD LutEntry source_bin(int64_t below, int64_t count, double n, KnotCursor& cursor,
                          const double* f, const double* eps, bool one_value, double* err) {
  const double* q = cursor.q;
  const double q_lo = ddiv(static_cast<double>(below + 1), n);
  const double q_hi = ddiv(static_cast<double>(below + count), n);
  const int h_lo = cursor.upper(q_lo);
  const double v_lo = interp_at(q_lo, q, f, cursor.n, h_lo);
  const double e_lo = eps_at_knot(q_lo, q, eps, cursor.n, h_lo);
  const int h_hi = cursor.upper(q_hi);
  const double v_hi = interp_at(q_hi, q, f, cursor.n, h_hi);
  const double e_hi = eps_at_knot(q_hi, q, eps, cursor.n, h_hi);
  if (one_value) {
    *err = e_hi;
    return {out_value<kUint8>(v_hi), 0.0f};
  }
  *err = dadd(dsub(v_hi, v_lo), e_lo > e_hi ? e_lo : e_hi);
  const float a = out_value<kUint8>(v_lo);
  return {a, fsub(out_value<kUint8>(v_hi), a)};
}

// Whether every bin of a source plane holds one value: a constant plane, or a uint8 plane whose
// levels (1 apart) land at least 2 apart on the bin axis.
HM_HD bool one_value_per_bin(bool uint8, float lo, float hi, float scale) {
  return lo == hi || (uint8 && scale >= 2.0f);
}

HM_HD float apply_lut(float t, float a, float d) { return fadd(a, fmul(t, d)); }

}  // namespace reblur_hm
