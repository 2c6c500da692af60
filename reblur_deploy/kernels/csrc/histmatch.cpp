// Batched per-(image, channel) histogram matching on the CPU, and the registration of the
// reblur_ext::hist_match operator (its CUDA kernel is in histmatch_cuda.cu).
//
//   reblur_ext::hist_match_out(Tensor source, Tensor reference, int bins, Tensor(a!) out,
//                              float? refine_above=None) -> Tensor bound
//
// source: P x Ns, reference: P x Nr (P = N * C planes, contiguous), both float32 or both uint8.
// out: P x Ns, source's dtype, contiguous: every element is written. bound: P float64, the
// proven bound of |out - exact| per plane (inf for a plane with non-finite values). See
// histmatch_common.h for the algorithm.
//
// Parallelism: ATen's parallel_for (compiled with -fopenmp: it runs on torch's own OpenMP
// runtime and thread count, torch.set_num_threads applies) over planes x chunks; inner loops
// are written for auto-vectorisation (#pragma omp simd). The extension is built for the
// baseline x86-64 (SSE2); the range and histogram passes also get AVX2 and AVX-512 clones,
// chosen at load time (HM_X86_CLONES), and the lookup is written with AVX2 and AVX-512 gather
// intrinsics (GCC 12 emulates gathers with scalar loads), chosen by measured speed at run time
// (pick_apply_lut).
//
// Measured choices (scripts/histmatch_ab.py; docs/BENCHMARKS.md): counts only for the source's
// histogram (the reference's min, max and cmin per bin cost 2-3x a count per pixel); threads
// taking histogram tasks from a shared counter, dearer ones first; one histogram per chunk (two
// interleaved ones for even and odd pixels, against store-to-load chains, were 10 % slower);
// scratch memory kept between calls.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <limits>
#include <optional>
#include <vector>

#include "histmatch_common.h"

#if defined(__x86_64__) && defined(__GLIBC__)
#include <immintrin.h>
#endif

// AVX2 and AVX-512 clones of a function, picked when the library loads (an ifunc: x86-64 with
// glibc only; elsewhere the one baseline build).
#if defined(__x86_64__) && defined(__GLIBC__)
#define HM_X86_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HM_X86_CLONES
#endif

namespace reblur_hm {
namespace {

constexpr int64_t kMinChunk = 1 << 16;  // pixels per histogram task, at least
constexpr int64_t kApplyChunk = 1 << 16;  // pixels per lookup task

// A reference bin, as one task counts it.
struct Bin {
  int32_t count;
  int32_t cmin;  // pixels equal to mn
  float mn, mx;
};

// A reference plane's histogram, its tasks' bins merged.
struct Histogram {
  std::vector<int64_t> count, cmin;
  std::vector<float> mn, mx;
  void reset(int bins) {
    count.assign(bins, 0);
    cmin.assign(bins, 0);
    mn.assign(bins, std::numeric_limits<float>::infinity());
    mx.assign(bins, -std::numeric_limits<float>::infinity());
  }

  void merge(const Bin* part, int bins) {
    for (int k = 0; k < bins; ++k) {
      const Bin& e = part[k];
      if (e.count == 0) continue;
      count[k] += e.count;
      if (e.mn < mn[k]) {
        mn[k] = e.mn;
        cmin[k] = e.cmin;
      } else if (e.mn == mn[k]) {
        cmin[k] += e.cmin;
      }
      mx[k] = std::max(mx[k], e.mx);
    }
  }
};

struct Range {
  float lo, hi;
  bool finite;
};

HM_X86_CLONES
Range plane_range(const float* p, int64_t n) {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  int bad = 0;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) {
    const float x = p[i];
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    bad |= !(x - x == 0.0f);  // NaN or infinite
  }
  return {canonical(lo), canonical(hi), bad == 0};
}

constexpr int kBlock = 1024;

// The canonical values of a block of m <= kBlock pixels and their bins (vectorised).
void bin_block(const float* p, int m, float lo, float scale, int bins, float* xs, int32_t* idx) {
#pragma omp simd
  for (int j = 0; j < m; ++j) {
    const float x = canonical(p[j]);
    xs[j] = x;
    idx[j] = bin_of(x, lo, scale, bins);
  }
}

// visit(i, bin, x) for each pixel i of p[0, n) in order, with its bin and canonical value: the
// bins of each block of kBlock pixels are computed first, in a vectorised loop (binning inside
// the histogram's scatter loop ran 30 % slower). Always inlined, so that the histogram's
// AVX2/AVX-512 clones get their own vector loop.
template <typename Visit>
__attribute__((always_inline)) inline void for_each_binned(const float* p, int64_t n, float lo,
                                                           float scale, int bins, Visit&& visit) {
  float xs[kBlock];
  int32_t idx[kBlock];
  for (int64_t s = 0; s < n; s += kBlock) {
    const int m = static_cast<int>(std::min<int64_t>(kBlock, n - s));
    bin_block(p + s, m, lo, scale, bins, xs, idx);
    for (int j = 0; j < m; ++j) visit(s + j, idx[j], xs[j]);
  }
}

// One chunk of a reference plane into h[0, bins): per bin the count, min, max and cmin, the
// number of pixels equal to the min (the exact quantile of a knot; clamped images hold many
// equal values at 0 and 1). One pass: a value at or below its bin's min is rare once the bin
// holds a few values (4 % of a 720p frame's pixels), so that branch is predictable; a
// branch-free update of the min and cmin was 10-25 % slower.
HM_X86_CLONES
void chunk_histogram(const float* p, int64_t n, float lo, float scale, int bins, Bin* h) {
  for_each_binned(p, n, lo, scale, bins, [h](int64_t, int b, float x) {
    Bin& e = h[b];
    e.count += 1;
    if (x <= e.mn) {
      e.cmin = x < e.mn ? 1 : e.cmin + 1;
      e.mn = x;
    }
    e.mx = x > e.mx ? x : e.mx;
  });
}

// One chunk of a source plane: counts only (32 KiB of bins, in the L1 cache; 2-3x the speed of
// chunk_histogram).
HM_X86_CLONES
void chunk_counts(const float* p, int64_t n, float lo, float scale, int bins, int32_t* count) {
  for_each_binned(p, n, lo, scale, bins, [count](int64_t, int b, float) { count[b] += 1; });
}

struct Knots {
  std::vector<double> q, f, eps;
};

// The reference's knots (see histmatch_common.h), into k (cleared first, capacity kept).
void reference_knots(const Histogram& h, int64_t total, Knots& k) {
  k.q.clear();
  k.f.clear();
  k.eps.clear();
  const double n = static_cast<double>(total);
  int64_t cum = 0;
  for (size_t b = 0; b < h.count.size(); ++b) {
    if (h.count[b] == 0) continue;
    const int64_t prev = cum;
    cum += h.count[b];
    if (h.mn[b] < h.mx[b]) {
      k.q.push_back(static_cast<double>(prev + h.cmin[b]) / n);
      k.f.push_back(h.mn[b]);
      k.eps.push_back(0.0);
      k.q.push_back(static_cast<double>(cum) / n);
      k.f.push_back(h.mx[b]);
      k.eps.push_back(static_cast<double>(h.mx[b]) - static_cast<double>(h.mn[b]));
    } else {
      k.q.push_back(static_cast<double>(cum) / n);
      k.f.push_back(h.mx[b]);
      k.eps.push_back(0.0);
    }
  }
}

// A plane's lookup table as two arrays, LutEntry's a and d: the per-pixel lookup gathers each.
struct Lut {
  float *a, *d;
  void set(size_t b, const LutEntry& e) const {
    a[b] = e.a;
    d[b] = e.d;
  }
};

// Fills one plane's lookup table and each bin's error bound (err; 0 for an empty bin) from the
// source's counts; returns the plane's bound. The quantiles queried, q_lo(b) <= q_hi(b) <
// q_lo(b + 1) <= ..., never decrease: one forward walk finds every knot.
double build_lut(const int64_t* count, int bins, int64_t n_src, bool one_value, const Knots& k,
                 Lut lut, double* bin_err) {
  const double* f = k.f.data();
  const double* eps = k.eps.data();
  const double ns = static_cast<double>(n_src);
  KnotCursor cursor{k.q.data(), static_cast<int>(k.q.size()), 0};
  double bound = 0.0;
  int64_t cum = 0;
  for (int b = 0; b < bins; ++b) {
    if (count[b] == 0) {
      lut.set(b, {0.0f, 0.0f});
      bin_err[b] = 0.0;
      continue;
    }
    lut.set(b, source_bin<false>(cum, count[b], ns, cursor, f, eps, one_value, &bin_err[b]));
    cum += count[b];
    bound = std::max(bound, bin_err[b]);
  }
  return bound;
}

// refine_plane maps every bin of one value exactly on a plane whose values fill at most
// 1/kFewValues of its bins.
constexpr int kFewValues = 8;

// One output value that replaces the lookup's: out[at] = value.
struct Fix {
  int64_t at;
  float value;
};

// Refines the source bins of a plane whose bound exceeds refine_above (bin_err, the lookup
// table and `fixes` are updated); returns the plane's bound after that. A pixel x of bin b has
// the exact quantile (C_{b-1} + #{pixels of b <= x}) / N, and its value through the knots is the
// exact mapping up to eps at that quantile.
// 1. With few_values (a plane whose values fill at most 1/kFewValues of the bins, such as
//    8-bit levels stored as floats) one pass finds the min and max of every bin not yet exact:
//    a bin holding one value maps as a whole to the value at C_b / N, so that such planes are
//    matched exactly, as uint8 planes are.
// 2. The pixels of the bins still beyond refine_above are sorted and each mapped at its exact
//    quantile (into `fixes`, written over the lookup's output afterwards). These are mostly in
//    sparse histogram tails: a few pixels whose quantiles straddle a gap in the reference's
//    values, where placing them by value between the bin's two mapped quantiles can miss by
//    levels, and which would otherwise send the whole plane to the exact path.
double refine_plane(const float* p, int64_t n, float lo, float scale, int bins,
                    const int64_t* count, const Knots& k, Lut lut, double* bin_err,
                    double refine_above, bool few_values, std::vector<Fix>& fixes) {
  const int knots = static_cast<int>(k.q.size());
  const double* q = k.q.data();
  const double* f = k.f.data();
  const double* eps = k.eps.data();
  const double ns = static_cast<double>(n);
  std::vector<uint8_t> refine(bins, 0);

  // 1. bins of one value
  if (few_values) {
    for (int b = 0; b < bins; ++b) refine[b] = bin_err[b] > 0.0;
    std::vector<float> mn(bins, std::numeric_limits<float>::infinity());
    std::vector<float> mx(bins, -std::numeric_limits<float>::infinity());
    for_each_binned(p, n, lo, scale, bins, [&](int64_t, int b, float x) {
      if (!refine[b]) return;
      mn[b] = std::min(mn[b], x);
      mx[b] = std::max(mx[b], x);
    });
    KnotCursor cursor{q, knots, 0};
    int64_t below = 0;
    for (int b = 0; b < bins; ++b) {
      if (refine[b] && mn[b] == mx[b]) {
        lut.set(b, source_bin<false>(below, count[b], ns, cursor, f, eps, true, &bin_err[b]));
      }
      below += count[b];
    }
  }
  double bound = 0.0;
  bool left = false;
  for (int b = 0; b < bins; ++b) {
    refine[b] = bin_err[b] > refine_above;
    if (refine[b]) {
      left = true;
    } else {
      bound = std::max(bound, bin_err[b]);
    }
  }
  if (!left) return bound;

  // 2. pixel by pixel
  struct Pixel {
    int32_t bin;
    float x;
    int64_t at;
  };
  std::vector<Pixel> pixels;
  for_each_binned(p, n, lo, scale, bins, [&](int64_t i, int b, float x) {
    if (refine[b]) pixels.push_back({b, x, i});
  });
  std::sort(pixels.begin(), pixels.end(), [](const Pixel& a, const Pixel& b) {
    return a.bin != b.bin ? a.bin < b.bin : a.x < b.x;
  });
  int64_t below = 0;  // C_{b-1}: the pixels of the bins before the current one
  int bin = 0;
  size_t first = 0;  // the current bin's first entry in `pixels`
  for (size_t i = 0; i < pixels.size();) {
    const Pixel& px = pixels[i];
    if (i == 0 || px.bin != pixels[i - 1].bin) {
      for (; bin < px.bin; ++bin) below += count[bin];
      first = i;
    }
    size_t end = i + 1;  // past the run of pixels equal to px.x
    while (end < pixels.size() && pixels[end].bin == px.bin && pixels[end].x == px.x) ++end;
    const double qx = static_cast<double>(below + static_cast<int64_t>(end - first)) / ns;
    const float y = out_value<false>(interp(qx, q, f, knots));
    bound = std::max(bound, eps_at(qx, q, eps, knots));
    for (; i < end; ++i) fixes.push_back({pixels[i].at, y});
  }
  return bound;
}

// The lookup of n pixels: out[i] = a + t * d of x = canonical(p[i]), its bin's entry and its
// place t in the bin.
void apply_lut_portable(const float* p, float* out, int64_t n, float lo, float scale, int bins,
                        Lut lut) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float f = bin_coord(canonical(p[i]), lo, scale);
    const int b = bin_index(f, bins);
    out[i] = apply_lut(bin_fraction(f, b), lut.a[b], lut.d[b]);
  }
}

#if defined(__x86_64__) && defined(__GLIBC__)
// The same lookup with AVX-512's or AVX2's gather instructions, which GCC 12 does not emit for
// this loop (it emulates them with scalar loads): about 1.9x and 1.5x the portable loop's speed.
// The same float operations in the same order (no fused multiply-add): the same results bit
// for bit.
__attribute__((target("avx512f"))) void apply_lut_avx512(const float* p, float* out, int64_t n,
                                                         float lo, float scale, int bins,
                                                         Lut lut) {
  const __m512 vlo = _mm512_set1_ps(lo), vscale = _mm512_set1_ps(scale);
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  const __m512 top = _mm512_set1_ps(static_cast<float>(bins - 1));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 x = _mm512_add_ps(_mm512_loadu_ps(p + i), zero);  // canonical
    const __m512 f = _mm512_mul_ps(_mm512_sub_ps(x, vlo), vscale);  // bin_coord
    __m512 c = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(f, zero, _CMP_GE_OQ), f);  // bin_index
    c = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, top, _CMP_LE_OQ), top, c);
    const __m512i b = _mm512_cvttps_epi32(c);
    __m512 t = _mm512_sub_ps(f, _mm512_cvtepi32_ps(b));  // bin_fraction
    t = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(t, zero, _CMP_GE_OQ), t);
    t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, one, _CMP_LE_OQ), one, t);
    const __m512 a = _mm512_i32gather_ps(b, lut.a, 4);
    const __m512 d = _mm512_i32gather_ps(b, lut.d, 4);
    _mm512_storeu_ps(out + i, _mm512_add_ps(a, _mm512_mul_ps(t, d)));  // apply_lut
  }
  apply_lut_portable(p + i, out + i, n - i, lo, scale, bins, lut);
}

__attribute__((target("avx2"))) void apply_lut_avx2(const float* p, float* out, int64_t n,
                                                    float lo, float scale, int bins, Lut lut) {
  const __m256 vlo = _mm256_set1_ps(lo), vscale = _mm256_set1_ps(scale);
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  const __m256 top = _mm256_set1_ps(static_cast<float>(bins - 1));
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_add_ps(_mm256_loadu_ps(p + i), zero);
    const __m256 f = _mm256_mul_ps(_mm256_sub_ps(x, vlo), vscale);
    __m256 c = _mm256_blendv_ps(zero, f, _mm256_cmp_ps(f, zero, _CMP_GE_OQ));
    c = _mm256_blendv_ps(top, c, _mm256_cmp_ps(c, top, _CMP_LE_OQ));
    const __m256i b = _mm256_cvttps_epi32(c);
    __m256 t = _mm256_sub_ps(f, _mm256_cvtepi32_ps(b));
    t = _mm256_blendv_ps(zero, t, _mm256_cmp_ps(t, zero, _CMP_GE_OQ));
    t = _mm256_blendv_ps(one, t, _mm256_cmp_ps(t, one, _CMP_LE_OQ));
    const __m256 a = _mm256_i32gather_ps(lut.a, b, 4);
    const __m256 d = _mm256_i32gather_ps(lut.d, b, 4);
    _mm256_storeu_ps(out + i, _mm256_add_ps(a, _mm256_mul_ps(t, d)));
  }
  apply_lut_portable(p + i, out + i, n - i, lo, scale, bins, lut);
}
#endif

using ApplyLut = void (*)(const float*, float*, int64_t, float, float, int, Lut);

struct LutVariant {
  ApplyLut apply;
  const char* name;
};

// The lookup by measured speed, not by instruction set alone: gathers are the fastest way on
// Intel cores and slower than scalar loads on AMD Zen 4, which has AVX-512 all the same. Every
// variant the CPU runs (all give the same bits) is timed on one synthetic plane of 64 Ki pixels
// the first time a lookup runs (about a millisecond); REBLUR_HISTMATCH_LUT=avx512|avx2|portable
// forces one (an unknown or unsupported name is ignored: the measured choice stands).
LutVariant pick_apply_lut() {
  std::vector<LutVariant> variants{{apply_lut_portable, "portable"}};
#if defined(__x86_64__) && defined(__GLIBC__)
  if (__builtin_cpu_supports("avx2")) variants.push_back({apply_lut_avx2, "avx2"});
  if (__builtin_cpu_supports("avx512f")) variants.push_back({apply_lut_avx512, "avx512"});
#endif
  if (const char* forced = std::getenv("REBLUR_HISTMATCH_LUT")) {
    for (const LutVariant& v : variants)
      if (std::strcmp(v.name, forced) == 0) return v;
  }
  constexpr int64_t n = kApplyChunk;
  constexpr int bins = 8192;
  std::vector<float> pixels(n), out(n), a(bins), d(bins, 1.0f / bins);
  uint32_t state = 12345;  // a fixed pseudo-random plane: bins hit in no pattern
  for (float& x : pixels) {
    state = state * 1664525u + 1013904223u;
    x = static_cast<float>(state >> 8) * (1.0f / 16777216.0f);
  }
  for (int b = 0; b < bins; ++b) a[b] = static_cast<float>(b) / bins;
  const Lut lut{a.data(), d.data()};
  LutVariant best = variants.front();
  double best_seconds = std::numeric_limits<double>::infinity();
  for (const LutVariant& v : variants) {
    v.apply(pixels.data(), out.data(), n, 0.0f, bins, bins, lut);  // warm the caches
    for (int repeat = 0; repeat < 5; ++repeat) {
      const auto start = std::chrono::steady_clock::now();
      v.apply(pixels.data(), out.data(), n, 0.0f, bins, bins, lut);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (seconds < best_seconds) best_seconds = seconds, best = v;
    }
  }
  return best;
}

const LutVariant& lut_variant() {
  static const LutVariant chosen = pick_apply_lut();
  return chosen;
}

// Working memory kept from call to call by each calling thread: allocations this large come
// fresh from mmap, and touching their pages cost about 0.7 ms a call (most of a small image's
// time).
struct Scratch {
  std::vector<Bin> parts;          // reference tasks' bins
  std::vector<int32_t> counts;     // source tasks' counts
  std::vector<Histogram> hists;    // per reference plane
  std::vector<int64_t> src_count;  // P x bins
  std::vector<float> tables;       // the planes' Lut arrays: P x bins each of a and d
  std::vector<double> bin_err;
};
// A call on more plane-bins than this frees its scratch afterwards (about 14 MiB kept at most):
// a large batch would otherwise leave tens of MiB on every thread that called.
constexpr int64_t kKeepPlaneBins = 16 * 8192;

// refine_above: source bins whose bound exceeds it are refined (refine_plane); infinity (the
// operator's None) leaves the binned result as it is.
at::Tensor hist_match_impl(const at::Tensor& source, const at::Tensor& reference, int bins,
                           double refine_above, at::Tensor& out) {
  const int64_t planes = source.size(0), ns = source.size(1), nr = reference.size(1);
  const float* src = source.const_data_ptr<float>();
  const float* ref = reference.const_data_ptr<float>();
  at::Tensor bound = at::empty({planes}, source.options().dtype(at::kDouble));
  float* dst = out.mutable_data_ptr<float>();
  double* bound_ptr = bound.mutable_data_ptr<double>();

  // 1. ranges of the 2P planes
  std::vector<Range> ranges(2 * planes);
  at::parallel_for(0, 2 * planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      ranges[j] = j < planes ? plane_range(src + j * ns, ns)
                             : plane_range(ref + (j - planes) * nr, nr);
    }
  });

  // 2. histograms: tasks = (plane of either tensor, chunk), merged per plane afterwards. A
  // plane is split only when there are fewer planes than threads: every task starts a fresh
  // histogram (cold cache lines, mispredicted first visits), which costs more than it saves.
  // The threads take tasks in turn from a shared counter, the reference's (2-3x dearer per
  // pixel) first, so that each gets about half the work.
  struct Task {
    int64_t plane;  // < planes: source plane, else reference plane (plane - planes)
    int64_t begin, end;
    int64_t slot;   // its bins: parts[slot * bins] (reference) or counts[slot * bins] (source)
  };
  std::vector<Task> tasks;
  const int64_t splits = std::max<int64_t>(1, (at::get_num_threads() + 2 * planes - 1) /
                                                    (2 * planes));
  int64_t ref_tasks = 0, src_tasks = 0;
  for (int64_t j = 2 * planes - 1; j >= 0; --j) {
    const int64_t n = j < planes ? ns : nr;
    const int64_t chunk = std::max(kMinChunk, (n + splits - 1) / splits);
    for (int64_t s = 0; s < n; s += chunk) {
      tasks.push_back({j, s, std::min(n, s + chunk), j < planes ? src_tasks++ : ref_tasks++});
    }
  }
  thread_local Scratch scratch;  // the caller's: bound to references before any parallel_for
  std::vector<Bin>& parts = scratch.parts;
  std::vector<int32_t>& counts = scratch.counts;
  parts.resize(ref_tasks * bins);
  counts.resize(src_tasks * bins);
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  std::atomic<int64_t> next_task{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    const Bin empty{0, 0, std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()};
    for (int64_t t = next_task++; t < n_tasks; t = next_task++) {
      const Task& task = tasks[t];
      const Range& r = ranges[task.plane];
      const float scale = plane_scale(r.lo, r.hi, bins);
      const int64_t m = task.end - task.begin;
      if (task.plane < planes) {
        int32_t* count = counts.data() + task.slot * bins;
        std::fill_n(count, bins, 0);
        chunk_counts(src + task.plane * ns + task.begin, m, r.lo, scale, bins, count);
      } else {
        Bin* part = parts.data() + task.slot * bins;
        std::fill_n(part, bins, empty);
        chunk_histogram(ref + (task.plane - planes) * nr + task.begin, m, r.lo, scale, bins,
                        part);
      }
    }
  });
  const size_t m = static_cast<size_t>(planes) * bins;
  std::vector<Histogram>& hists = scratch.hists;
  hists.resize(planes);
  std::vector<int64_t>& src_count = scratch.src_count;
  src_count.assign(m, 0);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      hists[j].reset(bins);
      int64_t* count = src_count.data() + j * bins;
      for (const Task& task : tasks) {
        if (task.plane == planes + j) hists[j].merge(parts.data() + task.slot * bins, bins);
        if (task.plane != j) continue;
        const int32_t* part = counts.data() + task.slot * bins;
        for (int b = 0; b < bins; ++b) count[b] += part[b];
      }
    }
  });

  // 3. knots and lookup tables, per plane
  std::vector<float>& tables = scratch.tables;
  tables.resize(2 * m);
  const auto plane_lut = [&](int64_t j) {
    const size_t at = static_cast<size_t>(j) * bins;
    return Lut{tables.data() + at, tables.data() + m + at};
  };
  std::vector<double>& bin_err = scratch.bin_err;
  bin_err.resize(m);
  std::vector<std::vector<Fix>> fixes(planes);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      if (!ranges[j].finite || !ranges[planes + j].finite) {
        bound_ptr[j] = std::numeric_limits<double>::infinity();
        const Lut lut = plane_lut(j);
        for (int b = 0; b < bins; ++b) lut.set(b, {NAN, NAN});
        continue;
      }
      thread_local Knots k;  // on a pool thread: kept between calls, like Scratch
      reference_knots(hists[j], nr, k);
      double* err = bin_err.data() + j * bins;
      const int64_t* count = src_count.data() + j * bins;
      const Range& r = ranges[j];
      const float scale = plane_scale(r.lo, r.hi, bins);
      const bool one_value = one_value_per_bin(false, r.lo, r.hi, scale);
      bound_ptr[j] = build_lut(count, bins, ns, one_value, k, plane_lut(j), err);
      const bool few_values =
          std::isfinite(refine_above) &&
          std::count_if(count, count + bins, [](int64_t c) { return c > 0; }) <= bins / kFewValues;
      if (bound_ptr[j] > refine_above || (few_values && bound_ptr[j] > 0.0)) {
        bound_ptr[j] = refine_plane(src + j * ns, ns, r.lo, scale, bins, count, k, plane_lut(j),
                                    err, refine_above, few_values, fixes[j]);
      }
      if (bins > 8192) k = Knots();  // kept only at the default size
    }
  });

  // 4. apply
  const ApplyLut apply = lut_variant().apply;
  const int64_t chunks = (ns + kApplyChunk - 1) / kApplyChunk;
  at::parallel_for(0, planes * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t j = t / chunks, s = (t % chunks) * kApplyChunk;
      const Range& r = ranges[j];
      const int64_t off = j * ns + s;
      apply(src + off, dst + off, std::min(ns - s, kApplyChunk), r.lo,
            plane_scale(r.lo, r.hi, bins), bins, plane_lut(j));
    }
  });
  for (int64_t j = 0; j < planes; ++j) {
    for (const Fix& fix : fixes[j]) dst[j * ns + fix.at] = fix.value;
  }
  if (planes * bins > kKeepPlaneBins) scratch = Scratch();
  return bound;
}

}  // namespace

void check_inputs(const at::Tensor& source, const at::Tensor& reference, int64_t bins,
                  const at::Tensor& out) {
  TORCH_CHECK(source.dim() == 2 && reference.dim() == 2,
              "hist_match: source and reference must be P x N (planes x pixels)");
  TORCH_CHECK(source.size(0) == reference.size(0), "hist_match: different numbers of planes");
  TORCH_CHECK(source.size(1) > 0 && reference.size(1) > 0, "hist_match: empty plane");
  TORCH_CHECK(source.scalar_type() == reference.scalar_type(),
              "hist_match: source and reference must have one dtype");
  TORCH_CHECK(source.scalar_type() == at::kFloat || source.scalar_type() == at::kByte,
              "hist_match: float32 or uint8 tensors only");
  TORCH_CHECK(source.is_contiguous() && reference.is_contiguous(),
              "hist_match: tensors must be contiguous");
  TORCH_CHECK(bins >= 2 && bins <= (1 << 20), "hist_match: bins must be in [2, 2^20]");
  TORCH_CHECK(out.sizes() == source.sizes() && out.scalar_type() == source.scalar_type() &&
                  out.is_contiguous() && out.device() == source.device(),
              "hist_match: out must be a contiguous tensor like source");
}

namespace {

// uint8 planes: one bin per level, so the matching is exact whatever `bins` says: counts only,
// 256-entry knots and lookup tables. Same result as the binned algorithm on uint8 (the CUDA
// kernel and the torch implementation: both equal the exact reference with the default bins).
void count_levels(const uint8_t* p, int64_t n, int64_t* counts) {
  int32_t part[4][256] = {};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    ++part[0][p[i]];
    ++part[1][p[i + 1]];
    ++part[2][p[i + 2]];
    ++part[3][p[i + 3]];
    if ((i & ((1 << 26) - 4)) == 0 && i) {  // keep the int32 parts far from overflow
      for (int k = 0; k < 4; ++k) {
        for (int v = 0; v < 256; ++v) {
          counts[v] += part[k][v];
          part[k][v] = 0;
        }
      }
    }
  }
  for (; i < n; ++i) ++part[0][p[i]];
  for (int k = 0; k < 4; ++k) {
    for (int v = 0; v < 256; ++v) counts[v] += part[k][v];
  }
}

at::Tensor hist_match_levels(const at::Tensor& source, const at::Tensor& reference,
                             at::Tensor& out) {
  const int64_t planes = source.size(0), ns = source.size(1), nr = reference.size(1);
  const uint8_t* src = source.const_data_ptr<uint8_t>();
  const uint8_t* ref = reference.const_data_ptr<uint8_t>();
  uint8_t* dst = out.mutable_data_ptr<uint8_t>();
  std::vector<int64_t> counts(2 * planes * 256, 0);
  at::parallel_for(0, 2 * planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const uint8_t* p = j < planes ? src + j * ns : ref + (j - planes) * nr;
      count_levels(p, j < planes ? ns : nr, counts.data() + j * 256);
    }
  });
  std::vector<uint8_t> luts(planes * 256);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      std::vector<double> q, f;
      int64_t cum = 0;
      for (int v = 0; v < 256; ++v) {
        const int64_t c = counts[(planes + j) * 256 + v];
        if (c == 0) continue;
        cum += c;
        q.push_back(static_cast<double>(cum) / static_cast<double>(nr));
        f.push_back(v);
      }
      KnotCursor cursor{q.data(), static_cast<int>(q.size()), 0};
      cum = 0;
      for (int v = 0; v < 256; ++v) {
        const int64_t c = counts[j * 256 + v];
        if (c == 0) continue;
        cum += c;
        const double x = static_cast<double>(cum) / static_cast<double>(ns);
        const int n = static_cast<int>(q.size());
        const double y = interp_at(x, q.data(), f.data(), n, cursor.upper(x));
        luts[j * 256 + v] = static_cast<uint8_t>(out_value<true>(y));
      }
    }
  });
  at::parallel_for(0, planes * ((ns + kApplyChunk - 1) / kApplyChunk), 1,
                   [&](int64_t begin, int64_t end) {
                     const int64_t chunks = (ns + kApplyChunk - 1) / kApplyChunk;
                     for (int64_t t = begin; t < end; ++t) {
                       const int64_t j = t / chunks, s = (t % chunks) * kApplyChunk;
                       const uint8_t* lut = luts.data() + j * 256;
                       const uint8_t* p = src + j * ns;
                       uint8_t* o = dst + j * ns;
                       for (int64_t i = s; i < std::min(ns, s + kApplyChunk); ++i) o[i] = lut[p[i]];
                     }
                   });
  return at::zeros({planes}, source.options().dtype(at::kDouble));
}

at::Tensor hist_match_cpu(const at::Tensor& source, const at::Tensor& reference, int64_t bins,
                          at::Tensor& out, std::optional<double> refine_above) {
  check_inputs(source, reference, bins, out);
  TORCH_CHECK(source.device().is_cpu() && reference.device().is_cpu(),
              "hist_match_cpu: CPU tensors only");
  if (source.scalar_type() == at::kByte) return hist_match_levels(source, reference, out);
  const double above = refine_above.value_or(std::numeric_limits<double>::infinity());
  return hist_match_impl(source, reference, static_cast<int>(bins), above, out);
}

}  // namespace

// The lookup variant this process measured fastest (or REBLUR_HISTMATCH_LUT forced).
std::string hist_match_lut() { return lut_variant().name; }

}  // namespace reblur_hm

TORCH_LIBRARY(reblur_ext, m) {
  m.def(
      "hist_match_out(Tensor source, Tensor reference, int bins, Tensor(a!) out, "
      "float? refine_above=None) -> Tensor");
  m.def("hist_match_lut() -> str", &reblur_hm::hist_match_lut);
}

TORCH_LIBRARY_IMPL(reblur_ext, CPU, m) { m.impl("hist_match_out", &reblur_hm::hist_match_cpu); }
