// CUDA kernels of reblur_ext::hist_match (schema and CPU kernel: histmatch.cpp; algorithm and
// error bound: histmatch_common.h). Batched: every launch covers all P = N * C planes.
//
//   1. plane ranges: at::aminmax over each plane of source and reference
//   2. hist_kernel: per block, a shared-memory histogram of one chunk of one plane (count, and for
//      the reference min and max as order-preserving integer keys, all by shared-memory
//      atomics), merged into the plane's global histogram with one global atomic per non-empty
//      bin
//   3. cmin_kernel: reference pixels equal to their bin's min (a second, read-only sweep)
//   4. lut_kernel: one block per plane scans the reference histogram into knots (CDF scan with
//      cub::BlockScan), scans the source's counts, and maps each source bin's lowest and highest
//      quantile through the knots (binary search, numpy.interp arithmetic); block max of the
//      per-bin error bound
//   5. apply_kernel: out = lut lookup of each source pixel at its place in its bin
//
// All arithmetic that must agree with the CPU and torch paths goes through histmatch_common.h
// (explicitly rounded intrinsics: no FMA contraction).

#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cstdint>
#include <optional>
#include <math_constants.h>

#include "histmatch_common.h"

namespace reblur_hm {
namespace {

constexpr int kThreads = 512;      // histogram and apply blocks
constexpr int kLutThreads = 1024;  // one block per plane
constexpr int kChunk = 1 << 16;    // pixels per histogram block: 15 blocks per 720p plane

struct MaxOp {
  __device__ __forceinline__ double operator()(double a, double b) const { return fmax(a, b); }
};

// Order-preserving float <-> int32 keys, for atomicMin/atomicMax on floats of either sign.
__device__ __forceinline__ int float_key(float x) {
  const int i = __float_as_int(x);
  return i >= 0 ? i : i ^ 0x7fffffff;
}
__device__ __forceinline__ float key_float(int k) {
  return __int_as_float(k >= 0 ? k : k ^ 0x7fffffff);
}

template <typename scalar_t>
__device__ __forceinline__ float load_float(const scalar_t* p, int64_t i) {
  return canonical(static_cast<float>(p[i]));
}

// Global histogram layout, int32 [2][P][4][bins]: count, min key, max key, cmin (the source's
// [0] holds counts only).
struct Hist {
  int* base;
  int planes, bins;
  __device__ int* field(int which, int plane, int f) const {
    return base + ((static_cast<int64_t>(which) * planes + plane) * 4 + f) * bins;
  }
};

__global__ void init_hist_kernel(Hist h) {
  const int64_t total = static_cast<int64_t>(2) * h.planes * 4 * h.bins;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int f = static_cast<int>((i / h.bins) % 4);
    h.base[i] = f == 1 ? INT_MAX : (f == 2 ? INT_MIN : 0);
  }
}

template <typename scalar_t>
__global__ void hist_kernel(const scalar_t* __restrict__ src, const scalar_t* __restrict__ ref,
                            int64_t ns, int64_t nr, const float* __restrict__ lo_s,
                            const float* __restrict__ hi_s, const float* __restrict__ lo_r,
                            const float* __restrict__ hi_r, Hist h) {
  extern __shared__ int smem[];
  const int bins = h.bins;
  int* s_count = smem;
  int* s_min = smem + bins;
  int* s_max = smem + 2 * bins;
  const int which = blockIdx.z, plane = blockIdx.y;
  const int64_t n = which == 0 ? ns : nr;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  if (begin >= n) return;
  const int64_t end = min(n, begin + static_cast<int64_t>(kChunk));
  const scalar_t* p = (which == 0 ? src + plane * ns : ref + plane * nr);
  const float lo = canonical(which == 0 ? lo_s[plane] : lo_r[plane]);
  const float hi = canonical(which == 0 ? hi_s[plane] : hi_r[plane]);
  const float scale = plane_scale(lo, hi, bins);

  for (int b = threadIdx.x; b < bins; b += blockDim.x) {
    s_count[b] = 0;
    s_min[b] = INT_MAX;
    s_max[b] = INT_MIN;
  }
  __syncthreads();
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float x = load_float(p, i);
    const int b = bin_of(x, lo, scale, bins);
    const int k = float_key(x);
    atomicAdd(&s_count[b], 1);
    if (which == 1) {
      atomicMin(&s_min[b], k);
      atomicMax(&s_max[b], k);
    }
  }
  __syncthreads();
  int* g_count = h.field(which, plane, 0);
  int* g_min = h.field(which, plane, 1);
  int* g_max = h.field(which, plane, 2);
  for (int b = threadIdx.x; b < bins; b += blockDim.x) {
    const int c = s_count[b];
    if (c == 0) continue;
    atomicAdd(&g_count[b], c);
    if (which == 1) {
      atomicMin(&g_min[b], s_min[b]);
      atomicMax(&g_max[b], s_max[b]);
    }
  }
}

template <typename scalar_t>
__global__ void cmin_kernel(const scalar_t* __restrict__ ref, int64_t nr,
                            const float* __restrict__ lo_r, const float* __restrict__ hi_r,
                            Hist h) {
  extern __shared__ int smem[];
  const int bins = h.bins;
  int* s_cmin = smem;
  const int plane = blockIdx.y;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  if (begin >= nr) return;
  const int64_t end = min(nr, begin + static_cast<int64_t>(kChunk));
  const scalar_t* p = ref + plane * nr;
  const float lo = canonical(lo_r[plane]);
  const float scale = plane_scale(lo, canonical(hi_r[plane]), bins);
  const int* g_min = h.field(1, plane, 1);

  for (int b = threadIdx.x; b < bins; b += blockDim.x) s_cmin[b] = 0;
  __syncthreads();
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float x = load_float(p, i);
    const int b = bin_of(x, lo, scale, bins);
    if (float_key(x) == g_min[b]) atomicAdd(&s_cmin[b], 1);
  }
  __syncthreads();
  int* g_cmin = h.field(1, plane, 3);
  for (int b = threadIdx.x; b < bins; b += blockDim.x) {
    if (s_cmin[b] != 0) atomicAdd(&g_cmin[b], s_cmin[b]);
  }
}

// One block per plane. knot_q/knot_f/knot_eps: [P][2 * bins] scratch.
template <bool kUint8>
__global__ void __launch_bounds__(kLutThreads)
    lut_kernel(Hist h, int64_t ns, int64_t nr, double* __restrict__ knot_q,
               double* __restrict__ knot_f, double* __restrict__ knot_eps,
               LutEntry* __restrict__ lut, double* __restrict__ bound,
               const float* __restrict__ lo_s, const float* __restrict__ hi_s,
               const float* __restrict__ lo_r, const float* __restrict__ hi_r) {
  using Scan = cub::BlockScan<int64_t, kLutThreads>;
  using Reduce = cub::BlockReduce<double, kLutThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } temp;
  __shared__ int s_knots;
  const int plane = blockIdx.x, bins = h.bins;
  const int per = (bins + kLutThreads - 1) / kLutThreads;  // consecutive bins per thread
  const int first = threadIdx.x * per;
  double* q = knot_q + static_cast<int64_t>(plane) * 2 * bins;
  double* f = knot_f + static_cast<int64_t>(plane) * 2 * bins;
  double* eps = knot_eps + static_cast<int64_t>(plane) * 2 * bins;
  LutEntry* table = lut + static_cast<int64_t>(plane) * bins;
  const bool finite = isfinite(lo_s[plane]) && isfinite(hi_s[plane]) &&
                      isfinite(lo_r[plane]) && isfinite(hi_r[plane]);

  // Reference: cumulative counts and knot offsets (pixels and knots scanned together).
  const int* r_count = h.field(1, plane, 0);
  const int* r_min = h.field(1, plane, 1);
  const int* r_max = h.field(1, plane, 2);
  const int* r_cmin = h.field(1, plane, 3);
  int64_t pixels = 0, knots = 0;
  for (int b = first; b < min(bins, first + per); ++b) {
    const int c = r_count[b];
    pixels += c;
    knots += c == 0 ? 0 : (r_min[b] < r_max[b] ? 2 : 1);
  }
  int64_t pixel_base, knot_base, knot_total;
  Scan(temp.scan).ExclusiveSum(pixels, pixel_base);
  __syncthreads();
  Scan(temp.scan).ExclusiveSum(knots, knot_base, knot_total);
  if (threadIdx.x == 0) s_knots = static_cast<int>(knot_total);
  __syncthreads();
  const double nr_d = static_cast<double>(nr);
  int64_t cum = pixel_base;
  int64_t k = knot_base;
  for (int b = first; b < min(bins, first + per); ++b) {
    const int c = r_count[b];
    if (c == 0) continue;
    const int64_t prev = cum;
    cum += c;
    const float mn = key_float(r_min[b]), mx = key_float(r_max[b]);
    if (mn < mx) {
      q[k] = ddiv(static_cast<double>(prev + r_cmin[b]), nr_d);
      f[k] = mn;
      eps[k] = 0.0;
      ++k;
      q[k] = ddiv(static_cast<double>(cum), nr_d);
      f[k] = mx;
      eps[k] = dsub(static_cast<double>(mx), static_cast<double>(mn));
      ++k;
    } else {
      q[k] = ddiv(static_cast<double>(cum), nr_d);
      f[k] = mx;
      eps[k] = 0.0;
      ++k;
    }
  }
  __syncthreads();  // knots complete (global writes of this block are visible after the barrier)

  // Source: cumulative counts, then each bin's LUT entry and error bound.
  const int n_knots = s_knots;
  const int* s_count = h.field(0, plane, 0);
  int64_t src_pixels = 0;
  for (int b = first; b < min(bins, first + per); ++b) src_pixels += s_count[b];
  int64_t src_base;
  __syncthreads();
  Scan(temp.scan).ExclusiveSum(src_pixels, src_base);
  __syncthreads();
  const double ns_d = static_cast<double>(ns);
  const float lo = canonical(lo_s[plane]), hi = canonical(hi_s[plane]);
  const bool one_value = one_value_per_bin(kUint8, lo, hi, plane_scale(lo, hi, bins));
  double err_max = 0.0;
  cum = src_base;
  // A thread's queries never decrease: one binary search, then a forward walk.
  KnotCursor cursor{q, n_knots, 0};
  cursor.k = upper_knot(ddiv(static_cast<double>(src_base), ns_d), q, n_knots) - 1;
  cursor.k = cursor.k < 0 ? 0 : cursor.k;
  for (int b = first; b < min(bins, first + per); ++b) {
    const int c = s_count[b];
    if (c == 0) {
      table[b] = {0.0f, 0.0f};
      continue;
    }
    double err;
    table[b] = source_bin<kUint8>(cum, c, ns_d, cursor, f, eps, one_value, &err);
    cum += c;
    err_max = fmax(err_max, err);
  }
  __syncthreads();
  const double plane_bound = Reduce(temp.reduce).Reduce(err_max, MaxOp());
  if (threadIdx.x == 0) bound[plane] = finite ? plane_bound : CUDART_INF;
}

template <typename scalar_t>
__global__ void apply_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ out,
                             int64_t ns, int planes, int bins, const float* __restrict__ lo_s,
                             const float* __restrict__ hi_s, const LutEntry* __restrict__ lut) {
  const int plane = blockIdx.y;
  const float lo = canonical(lo_s[plane]);
  const float scale = plane_scale(lo, canonical(hi_s[plane]), bins);
  const LutEntry* table = lut + static_cast<int64_t>(plane) * bins;
  const scalar_t* p = src + plane * ns;
  scalar_t* o = out + plane * ns;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < ns;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float x = load_float(p, i);
    const float fc = bin_coord(x, lo, scale);
    const int b = bin_index(fc, bins);
    const LutEntry e = table[b];
    o[i] = static_cast<scalar_t>(apply_lut(bin_fraction(fc, b), e.a, e.d));
  }
}

template <typename scalar_t>
at::Tensor hist_match_cuda_impl(const at::Tensor& source, const at::Tensor& reference, int bins,
                                at::Tensor& out) {
  constexpr bool kUint8 = std::is_same<scalar_t, uint8_t>::value;
  const int planes = static_cast<int>(source.size(0));
  const int64_t ns = source.size(1), nr = reference.size(1);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto opts = source.options();

  // 1. ranges (float32 per plane)
  auto [lo_s_t, hi_s_t] = at::aminmax(source, 1);
  auto [lo_r_t, hi_r_t] = at::aminmax(reference, 1);
  const at::Tensor lo_s = lo_s_t.to(at::kFloat), hi_s = hi_s_t.to(at::kFloat);
  const at::Tensor lo_r = lo_r_t.to(at::kFloat), hi_r = hi_r_t.to(at::kFloat);

  at::Tensor hist = at::empty({2, planes, 4, bins}, opts.dtype(at::kInt));
  Hist h{hist.mutable_data_ptr<int>(), planes, bins};
  init_hist_kernel<<<std::min<int64_t>(1024, (hist.numel() + 255) / 256), 256, 0, stream>>>(h);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // 2./3. histograms and min counts
  const int64_t chunks = (std::max(ns, nr) + kChunk - 1) / kChunk;
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(planes), 2);
  const size_t hist_smem = 3 * static_cast<size_t>(bins) * sizeof(int);
  C10_CUDA_CHECK(cudaFuncSetAttribute(hist_kernel<scalar_t>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(hist_smem)));
  const scalar_t* src = source.const_data_ptr<scalar_t>();
  const scalar_t* ref = reference.const_data_ptr<scalar_t>();
  const float* ls = lo_s.const_data_ptr<float>();
  const float* hs = hi_s.const_data_ptr<float>();
  const float* lr = lo_r.const_data_ptr<float>();
  const float* hr = hi_r.const_data_ptr<float>();
  const size_t cmin_smem = static_cast<size_t>(bins) * sizeof(int);
  C10_CUDA_CHECK(cudaFuncSetAttribute(cmin_kernel<scalar_t>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(cmin_smem)));
  hist_kernel<scalar_t><<<grid, kThreads, hist_smem, stream>>>(src, ref, ns, nr, ls, hs, lr, hr,
                                                                h);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const dim3 ref_grid(static_cast<unsigned>((nr + kChunk - 1) / kChunk),
                      static_cast<unsigned>(planes));
  cmin_kernel<scalar_t><<<ref_grid, kThreads, cmin_smem, stream>>>(ref, nr, lr, hr, h);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // 4. knots and lookup tables
  at::Tensor knots = at::empty({3, planes, 2 * static_cast<int64_t>(bins)}, opts.dtype(at::kDouble));
  at::Tensor lut = at::empty({planes, bins, 2}, opts.dtype(at::kFloat));
  at::Tensor bound = at::empty({planes}, opts.dtype(at::kDouble));
  double* kq = knots.mutable_data_ptr<double>();
  const int64_t knot_stride = static_cast<int64_t>(planes) * 2 * bins;
  lut_kernel<kUint8><<<planes, kLutThreads, 0, stream>>>(
      h, ns, nr, kq, kq + knot_stride, kq + 2 * knot_stride,
      reinterpret_cast<LutEntry*>(lut.mutable_data_ptr<float>()), bound.mutable_data_ptr<double>(),
      ls, hs, lr, hr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // 5. apply
  const int64_t blocks_x = std::min<int64_t>((ns + kThreads - 1) / kThreads, 1024);
  apply_kernel<scalar_t><<<dim3(static_cast<unsigned>(blocks_x), planes), kThreads, 0, stream>>>(
      src, out.mutable_data_ptr<scalar_t>(), ns, planes, bins, ls, hs,
      reinterpret_cast<const LutEntry*>(lut.const_data_ptr<float>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return bound;
}

}  // namespace

// Shared with the CPU kernel (histmatch.cpp).
void check_inputs(const at::Tensor& source, const at::Tensor& reference, int64_t bins,
                  const at::Tensor& out);

namespace {

// refine_above (the schema's pixel-by-pixel mapping of bins beyond a bound, histmatch.cpp) is not
// implemented here: the binned result and its bound come back as they are, and the caller
// recomputes planes beyond its tolerance exactly.
at::Tensor hist_match_cuda(const at::Tensor& source, const at::Tensor& reference, int64_t bins,
                           at::Tensor& out, std::optional<double> /*refine_above*/) {
  check_inputs(source, reference, bins, out);
  TORCH_CHECK(source.is_cuda() && reference.is_cuda() &&
                  source.get_device() == reference.get_device(),
              "hist_match_cuda: both tensors on one CUDA device");
  TORCH_CHECK(source.size(0) <= 65535, "hist_match_cuda: at most 65535 planes per call");
  const c10::cuda::CUDAGuard guard(source.device());
  int max_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                        source.get_device()));
  TORCH_CHECK(bins >= 2 && 3 * bins * static_cast<int64_t>(sizeof(int)) <= max_smem,
              "hist_match_cuda: bins must be >= 2 and fit three int arrays in shared memory (",
              max_smem / 12, " on this GPU)");
  if (source.scalar_type() == at::kByte) {
    return hist_match_cuda_impl<uint8_t>(source, reference, static_cast<int>(bins), out);
  }
  return hist_match_cuda_impl<float>(source, reference, static_cast<int>(bins), out);
}

}  // namespace
}  // namespace reblur_hm

TORCH_LIBRARY_IMPL(reblur_ext, CUDA, m) { m.impl("hist_match_out", &reblur_hm::hist_match_cuda); }
