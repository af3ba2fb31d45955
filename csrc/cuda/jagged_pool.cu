// CUDA kernels of jagged weighted mean pooling (semantics: dv365_ops/reference.py jagged_mean_pool).
//
// Events are cut into fixed chunks that may span bags, so a 70,000-event bag is spread over many CTAs and
// ten-event bags share one; each chunk keeps one running sum per column and flushes it with an atomic add
// when the bag changes. A second pass divides by the weight sum.
//
// Forward: a thread owns V adjacent columns (one 16-byte load per table row: 4 float32, 8 bf16/fp16, 2
// float64), a group of ceil(d / V) threads owns a chunk, and a CTA holds 256 / group-size groups, so short
// rows still fill the CTA. Each thread loads kUnroll rows before the first is used: 2048 resident threads x
// 4 x 16 bytes is 128 KB in flight per SM, several times the ~30 KB that ~4 TB/s x ~1 us of latency needs
// (gathered rows are 512 B to 1 KB, so their latency is longer than a stream's). Sums flush with float4
// atomics on sm_90 (one RED per 16 bytes instead of four). Rows not a multiple of V or unaligned take the
// same kernel with V = 1.
#include <algorithm>

#include "cuda/device.cuh"
#include "cuda/jagged_pool.h"

namespace dv365::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 128;  // events per chunk
constexpr int kUnroll = 4;   // rows loaded before the first is used

__device__ __forceinline__ int64_t bag_of(const int64_t* __restrict__ offsets, int64_t m, int64_t e) {
  // last bag b in [0, m) with offsets[b] <= e
  int64_t lo = 0, hi = m;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= e) lo = mid; else hi = mid;
  }
  return lo;
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Group g of the CTA pools events [chunk * kChunk, +kChunk) into num (its columns [V * lane, +V)) and den.
template <typename T, typename acc_t, int V>
__global__ void __launch_bounds__(kThreads) pool_sum_kernel(const T* __restrict__ table, int64_t num_rows,
                                                             int64_t row_stride, int64_t d, int group_size,
                                                             const int64_t* __restrict__ ids,
                                                             const int64_t* __restrict__ offsets, int64_t m, int64_t n,
                                                             const acc_t* __restrict__ weights, acc_t* __restrict__ num,
                                                             acc_t* __restrict__ den, int32_t* flag,
                                                             int64_t* first_bad_id, int64_t* first_bad_weight) {
  const int groups = blockDim.x / group_size;
  const int group = threadIdx.x / group_size;
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * groups + group;
  const int64_t e0 = chunk * kChunk;
  if (group >= groups || e0 >= n) return;
  const int64_t e1 = min(n, e0 + kChunk);
  const int64_t lane = static_cast<int64_t>(blockIdx.y) * group_size + threadIdx.x % group_size;
  const int64_t col = lane * V;
  const bool owns_den = blockIdx.y == 0 && threadIdx.x % group_size == 0;
  if (col >= d && !owns_den) return;
  const bool has_col = col < d;
  const int64_t c = has_col ? col : 0;
  int64_t bag = bag_of(offsets, m, e0);
  int64_t bag_end = offsets[bag + 1];
  acc_t acc[V], wsum = 0;
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = 0;
  for (int64_t base = e0; base < e1; base += kUnroll) {
    Pack<T, V> x[kUnroll];
    acc_t w[kUnroll];
    bool ok[kUnroll];  // a row with a bad id is neither loaded nor added
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u;
      w[u] = 0;
      ok[u] = false;
      if (e < e1) {
        const int64_t id = ids[e];
        if (id < 0 || id >= num_rows) {
          report_bad(flag, kIdOutOfRange, first_bad_id, e);
        } else {
          ok[u] = true;
          w[u] = weights ? weights[e] : acc_t(1);
          if (!(w[u] >= acc_t(0) && isfinite(w[u]))) report_bad(flag, kWeightsBad, first_bad_weight, e);
          if (has_col) x[u] = *reinterpret_cast<const Pack<T, V>*>(table + id * row_stride + c);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u;
      if (e >= e1) break;
      while (e >= bag_end && bag < m - 1) {
        if (has_col) atomic_add_n<acc_t, V>(num + bag * d + col, acc);
        if (owns_den) atomicAdd(den + bag, wsum);
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] = 0;
        wsum = 0;
        ++bag;
        bag_end = offsets[bag + 1];
      }
      if (ok[u] && has_col) {
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += w[u] * to_acc<acc_t>(x[u].v[i]);
      }
      wsum += w[u];
    }
  }
  if (has_col) atomic_add_n<acc_t, V>(num + bag * d + col, acc);
  if (owns_den) atomicAdd(den + bag, wsum);
}

// out = num / den per bag, V elements per thread (V divides d).
template <typename T, typename acc_t, int V>
__global__ void normalize_kernel(const acc_t* __restrict__ num,
                                                              const acc_t* __restrict__ den, int64_t m, int64_t d,
                                                              T* __restrict__ out) {
  const int64_t total = m * d / V;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const acc_t s = den[i * V / d];
    const Pack<acc_t, V> a = reinterpret_cast<const Pack<acc_t, V>*>(num)[i];
    Pack<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_acc<T>(s > 0 ? a.v[j] / s : acc_t(0));
    reinterpret_cast<Pack<T, V>*>(out)[i] = o;
  }
}

// den[b] = sum of the bag's weights (one warp per bag)
template <typename acc_t>
__global__ void bag_weight_sum_kernel(const int64_t* __restrict__ offsets, int64_t m, int64_t n,
                                      const acc_t* __restrict__ weights, acc_t* __restrict__ den, int32_t* flag,
                                      int64_t* first_bad_weight) {
  const int64_t bag = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (bag >= m) return;  // whole warps leave together: a warp is one bag
  const int64_t lo = max(int64_t(0), min(n, offsets[bag]));
  const int64_t hi = max(lo, min(n, offsets[bag + 1]));
  acc_t s = 0;
  if (weights) {
    for (int64_t e = lo + lane; e < hi; e += 32) {
      const acc_t w = weights[e];
      if (!(w >= acc_t(0) && isfinite(w))) report_bad(flag, kWeightsBad, first_bad_weight, e);
      s += w;
    }
  } else {
    s = lane == 0 ? static_cast<acc_t>(hi - lo) : acc_t(0);
  }
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) den[bag] = s;
}

// Backward: grad_table[ids[e]] += w_e / den[bag] * grad[bag] (kRows: rows[e] = w_e / den[bag] * grad[bag]).
template <bool kRows, typename T, typename acc_t, typename out_t>
__global__ void pool_backward_kernel(const T* __restrict__ grad, int64_t d, const int64_t* __restrict__ ids,
                                     int64_t num_rows, const int64_t* __restrict__ offsets, int64_t m, int64_t n,
                                     const acc_t* __restrict__ weights, const acc_t* __restrict__ den,
                                     out_t* __restrict__ out, int32_t* flag, int64_t* first_bad_id) {
  const int64_t e0 = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t e1 = min(n, e0 + kChunk);
  const int64_t col = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (col >= d) return;
  int64_t bag = bag_of(offsets, m, e0);
  int64_t bag_end = offsets[bag + 1];
  acc_t g = to_acc<acc_t>(grad[bag * d + col]);
  acc_t inv = den[bag] > 0 ? acc_t(1) / den[bag] : acc_t(0);
  for (int64_t e = e0; e < e1; ++e) {
    while (e >= bag_end && bag < m - 1) {
      ++bag;
      bag_end = offsets[bag + 1];
      g = to_acc<acc_t>(grad[bag * d + col]);
      inv = den[bag] > 0 ? acc_t(1) / den[bag] : acc_t(0);
    }
    const acc_t w = weights ? weights[e] : acc_t(1);
    if constexpr (kRows) {
      // row e of the result is the event's own: its id indexes nothing here, so any id is valid
      out[e * d + col] = from_acc<out_t>(w * inv * g);
    } else {
      const int64_t id = ids[e];
      if (id >= 0 && id < num_rows) {
        atomicAdd(out + id * d + col, w * inv * g);
      } else if (col == 0) {
        report_bad(flag, kIdOutOfRange, first_bad_id, e);
      }
    }
  }
}

int column_threads(int64_t d) {
  return static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, ceil_div(d, 32) * 32)));
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T, typename acc_t, int V>
void launch_sum(const T* table, int64_t num_rows, int64_t row_stride, int64_t d, const int64_t* ids,
                const int64_t* offsets, int64_t m, int64_t n, const acc_t* weights, acc_t* num, acc_t* den,
                int32_t* flag, int64_t* first_bad_id, int64_t* first_bad_weight, cudaStream_t stream) {
  const int64_t lanes = ceil_div(d, V);
  const int group_size = static_cast<int>(std::min<int64_t>(lanes, kThreads));
  const int groups = kThreads / group_size;
  const dim3 grid(static_cast<unsigned>(ceil_div(ceil_div(n, kChunk), groups)),
                  static_cast<unsigned>(ceil_div(lanes, group_size)));
  pool_sum_kernel<T, acc_t, V><<<grid, groups * group_size, 0, stream>>>(table, num_rows, row_stride, d, group_size,
                                                                         ids, offsets, m, n, weights, num, den, flag,
                                                                         first_bad_id, first_bad_weight);
}

template <typename T, typename acc_t, int V>
void launch_normalize(const acc_t* num, const acc_t* den, int64_t m, int64_t d, T* out, cudaStream_t stream) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(ceil_div(m * d / V, kThreads), 132 * 8));
  normalize_kernel<T, acc_t, V><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(num, den, m, d, out);
}

}  // namespace

cudaError_t launch_jagged_mean_pool(const void* table, DType dtype, int64_t num_rows, int64_t row_stride, int64_t d,
                                    const int64_t* ids, const int64_t* offsets, int64_t m, int64_t n,
                                    const void* weights, void* num, void* den, void* out, int32_t* flag,
                                    int64_t* first_bad_id, int64_t* first_bad_weight, cudaStream_t stream) {
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename AccType<T>::type;
    constexpr int V = 16 / sizeof(T);
    const T* tp = static_cast<const T*>(table);
    const acc_t* wp = static_cast<const acc_t*>(weights);
    acc_t* np = static_cast<acc_t*>(num);
    acc_t* dp = static_cast<acc_t*>(den);
    const bool vec = d % V == 0 && row_stride % V == 0 && aligned(table, 16);
    if (n > 0) {
      if (vec) {
        launch_sum<T, acc_t, V>(tp, num_rows, row_stride, d, ids, offsets, m, n, wp, np, dp, flag, first_bad_id,
                                first_bad_weight, stream);
      } else {
        launch_sum<T, acc_t, 1>(tp, num_rows, row_stride, d, ids, offsets, m, n, wp, np, dp, flag, first_bad_id,
                                first_bad_weight, stream);
      }
    }
    constexpr int W = 16 / sizeof(acc_t);  // one 16-byte load of num per thread
    if (d % W == 0) {
      launch_normalize<T, acc_t, W>(np, dp, m, d, static_cast<T*>(out), stream);
    } else {
      launch_normalize<T, acc_t, 1>(np, dp, m, d, static_cast<T*>(out), stream);
    }
  });
}

cudaError_t launch_jagged_mean_pool_backward(bool rows, const void* grad, DType dtype, int64_t d, const int64_t* ids,
                                             int64_t num_rows, const int64_t* offsets, int64_t m, int64_t n,
                                             const void* weights, void* den, void* out, int32_t* flag,
                                             int64_t* first_bad_id, int64_t* first_bad_weight, cudaStream_t stream) {
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename AccType<T>::type;
    const T* gp = static_cast<const T*>(grad);
    const acc_t* wp = static_cast<const acc_t*>(weights);
    acc_t* dp = static_cast<acc_t*>(den);
    bag_weight_sum_kernel<acc_t><<<static_cast<unsigned>(ceil_div(m * 32, 256)), 256, 0, stream>>>(offsets, m, n, wp,
                                                                                                  dp, flag, first_bad_weight);
    const int threads = column_threads(d);
    const dim3 grid(static_cast<unsigned>(ceil_div(n, kChunk)), static_cast<unsigned>(ceil_div(d, threads)));
    if (rows) {
      pool_backward_kernel<true, T, acc_t, T><<<grid, threads, 0, stream>>>(gp, d, ids, num_rows, offsets, m, n, wp, dp,
                                                                           static_cast<T*>(out), flag, first_bad_id);
    } else {
      pool_backward_kernel<false, T, acc_t, acc_t><<<grid, threads, 0, stream>>>(
          gp, d, ids, num_rows, offsets, m, n, wp, dp, static_cast<acc_t*>(out), flag, first_bad_id);
    }
  });
}

}  // namespace dv365::cuda
