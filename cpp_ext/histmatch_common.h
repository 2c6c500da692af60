// Binned histogram matching: the arithmetic shared by the CPU (histmatch.cpp) and CUDA
// (histmatch_cuda.cu) kernels. reblur_deploy/histmatch.py (`_match_binned_torch`) performs the
// same operations in the same order in torch, so the three agree bit for bit.
//
// Per (image, channel) plane, for the source and the reference:
//   lo, hi  = the plane's min and max;   scale = bins / (hi - lo)  (0 for a constant plane)
//   bin(x)  = trunc(clamp((x - lo) * scale, 0, bins - 1))          (float32 arithmetic)
//   per bin: count, min, max and cmin = how many pixels equal the bin's min.
// Reference knots (skimage's quantile mapping uses one knot per unique value; we use at most
// two per bin, both of them knots of the exact mapping):
//   a bin holding one value v:  (C_b / N, v)
//   a bin holding several:      ((C_{b-1} + cmin_b) / N, min_b)  and  (C_b / N, max_b)
// (C_b = pixels in bins <= b.) Each source bin maps the quantiles of its min and max,
// (C_{b-1} + cmin_b) / N and C_b / N, through numpy.interp on these knots, written exactly as
// the torch reference writes it; a pixel in between is placed linearly between the two by its
// value. Where every bin holds one value (8-bit images: levels 1/255 apart, bins at most
// range/8192 wide with the default 8192 bins) the knots and quantiles are the exact ones and
// the result equals the torch reference bit for bit.
//
// Error bound, per plane (returned beside the output): for a source bin, the exact result of
// each of its pixels lies between the exact mapping of its min and of its max quantile; the
// binned mapping differs from the exact one only strictly inside a multi-valued reference bin,
// by at most that bin's max - min. So
//   |ours - exact| <= max over source bins of (v_hi - v_lo) + eps(q_lo, q_hi)
// (plus float32 rounding), with eps the max - min of a multi-valued reference bin that the
// bin's quantiles fall strictly inside, else 0. The Python wrapper recomputes planes whose
// bound exceeds its tolerance with the exact reference.
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

HM_HD int bin_of(float x, float lo, float scale, int bins) {
  float f = fmul(fsub(x, lo), scale);
  f = f >= 0.0f ? f : 0.0f;  // NaN -> 0 too: never an index outside the histogram
  const float top = static_cast<float>(bins - 1);
  f = f <= top ? f : top;
  return static_cast<int>(f);
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

// One source bin's lookup entry: a pixel x of the bin becomes lo + (x - mn) * k, with the slope
// k = sc * (hi - lo) computed once per bin (lut_slope), so that the CPU's per-pixel lookup reads
// three values instead of four (its gathers are emulated, one load per value). A bin holding one
// value has sc = 0, hence k = 0 and the output lo exactly.
struct LutEntry {
  float mn, sc, lo, hi;
};

HM_HD float lut_slope(const LutEntry& e) { return fmul(e.sc, fsub(e.hi, e.lo)); }

HM_HD float apply_lut(float x, float mn, float k, float lo) {
  return fadd(lo, fmul(fsub(x, mn), k));
}

HM_HD float apply_lut(float x, const LutEntry& e) { return apply_lut(x, e.mn, lut_slope(e), e.lo); }

}  // namespace reblur_hm
