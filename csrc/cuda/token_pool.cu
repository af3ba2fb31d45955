// CUDA kernels of token-axis strided mean pooling (semantics: dv365_ops/reference.py token_pool).
//
// Pure streaming: the kernels must run at copy bandwidth. When every window is full (n % stride == 0) the
// windows tile the flattened input, so the op is one flat map: output run u (16 bytes, V elements) is the
// pooled image of input bytes [16 * S * u, 16 * S * (u + 1)), i.e. S aligned 16-byte vectors. A thread
// takes kUnits such runs per step and issues all their loads before the first add (Little's law: ~4 TB/s
// times ~1 us of latency is ~4 MB in flight, ~30 KB per SM; 2048 resident threads x kUnits * S * 16 bytes
// is 64 KB per SM at S = 2). Other shapes, strides and unaligned pointers take the scalar kernel: one thread
// per output, neighbouring threads on neighbouring windows, so each warp still reads one contiguous span.
// The backward of full windows is the inverse flat map, split by output 16-byte vector so that each warp
// store instruction also writes one contiguous span (token_pool_backward_vec_kernel).
#include <algorithm>

#include "cuda/device.cuh"
#include "cuda/token_pool.h"

namespace dv365::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 2048 / kThreads;  // full occupancy of an H100/H200 SM
constexpr int kSms = 132;
constexpr int kScalarUnroll = 4;  // outputs per thread per step in the scalar kernels, their loads issued together

// Units per thread per step: enough 16-byte loads in flight (>= 4) without spilling.
template <int S>
constexpr int units_for() {
  return S >= 4 ? 1 : 4 / S;
}

// Raw type of an aligned load or store of B bytes.
template <int B>
struct Raw;
template <>
struct Raw<2> {
  using type = unsigned short;
};
template <>
struct Raw<4> {
  using type = unsigned int;
};
template <>
struct Raw<8> {
  using type = uint2;
};
template <>
struct Raw<16> {
  using type = uint4;
};

// V elements of T in one 16-byte vector.
template <typename T>
constexpr int kVec = 16 / sizeof(T);

// N consecutive elements of T moved as one access, by default one 16-byte vector.
template <typename T, int N = kVec<T>>
struct Vec {
  using raw_t = typename Raw<N * sizeof(T)>::type;
  union {
    raw_t raw;
    T v[N];
  };
};

template <typename T, int N = kVec<T>>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  Vec<T, N> r;
  r.raw = __ldg(reinterpret_cast<const typename Vec<T, N>::raw_t*>(p));
  return r;
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T>& v) {
  *reinterpret_cast<uint4*>(p) = v.raw;
}

unsigned grid_for(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work, per_block), kSms * kBlocksPerSm)));
}

// Full windows of S elements over a flat input of total_out * S elements; `units` whole 16-byte output runs,
// then `tail` < V scalar outputs.
template <typename T, int S>
__global__ void __launch_bounds__(kThreads) token_pool_vec_kernel(const T* __restrict__ x, int64_t units, int64_t tail,
                                                                   T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  constexpr int V = kVec<T>, U = units_for<S>();
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  const acc_t div = acc_t(S);
  for (int64_t u0 = tid; u0 < units; u0 += U * step) {
    Vec<T> in[U][S];
#pragma unroll
    for (int a = 0; a < U; ++a) {
      const int64_t u = u0 + a * step;
      if (u < units) {
#pragma unroll
        for (int s = 0; s < S; ++s) in[a][s] = load_vec(x + (u * S + s) * V);
      }
    }
#pragma unroll
    for (int a = 0; a < U; ++a) {
      const int64_t u = u0 + a * step;
      if (u >= units) break;
      Vec<T> o;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        // output j of the run reads flat inputs j*S .. j*S+S-1 of the S vectors
        acc_t sum = 0;
#pragma unroll
        for (int k = 0; k < S; ++k) sum += to_acc<acc_t>(in[a][(j * S + k) / V].v[(j * S + k) % V]);
        o.v[j] = from_acc<T>(sum / div);
      }
      store_vec(out + u * V, o);
    }
  }
  if (tid < tail) {
    const int64_t j = units * V + tid;
    acc_t sum = 0;
#pragma unroll
    for (int k = 0; k < S; ++k) sum += to_acc<acc_t>(x[j * S + k]);
    out[j] = from_acc<T>(sum / div);
  }
}

// Backward of full windows: every input position k gets grad[k / S] / S. A thread owns output 16-byte vectors,
// so each warp store instruction writes one contiguous span (a thread writing the S vectors of one grad vector
// made every store instruction write every S-th 16-byte slot: partial 32-byte sectors, about half of copy
// bandwidth). Output vector o (positions o*V .. o*V+V-1) reads grad elements (o*V)/S .. (o*V+V-1)/S: when S
// divides V those are G = V/S consecutive elements, one load of 16/S bytes (aligned: its offset is o*16/S
// bytes); when V divides S it is one element, shared with the neighbouring threads. `units` whole output
// vectors, then `tail` < V scalar outputs. U outputs per thread per step, their loads issued before the first
// store (memory-level parallelism).
template <typename T, int S>
__global__ void __launch_bounds__(kThreads) token_pool_backward_vec_kernel(const T* __restrict__ grad, int64_t units,
                                                                            int64_t tail, T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  constexpr int V = kVec<T>, U = 4;
  static_assert(V % S == 0 || S % V == 0, "strides that neither divide nor are divided by V: spread kernel");
  constexpr int G = V % S == 0 ? V / S : 1;  // grad elements per output vector
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  const acc_t div = acc_t(S);
  for (int64_t u0 = tid; u0 < units; u0 += U * step) {
    Vec<T, G> g[U];
#pragma unroll
    for (int a = 0; a < U; ++a) {
      const int64_t u = u0 + a * step;
      if (u < units) {
        if constexpr (V % S == 0) {
          g[a] = load_vec<T, G>(grad + u * G);
        } else {
          g[a] = load_vec<T, G>(grad + u / (S / V));
        }
      }
    }
#pragma unroll
    for (int a = 0; a < U; ++a) {
      const int64_t u = u0 + a * step;
      if (u >= units) break;
      T val[G];
#pragma unroll
      for (int j = 0; j < G; ++j) val[j] = from_acc<T>(to_acc<acc_t>(g[a].v[j]) / div);
      Vec<T> o;
#pragma unroll
      for (int i = 0; i < V; ++i) o.v[i] = val[i / S];  // i / S < G: 0 when V divides S
      store_vec(out + u * V, o);
    }
  }
  if (tid < tail) {
    const int64_t k = units * V + tid;
    out[k] = from_acc<T>(to_acc<acc_t>(grad[k / S]) / div);
  }
}

// Backward of full windows for strides that neither divide nor are divided by V (S = 3), where an output
// vector's grad elements sit at no aligned offset: a thread reads one 16-byte run of grad (V windows) and
// writes its S * V outputs as S 16-byte vectors, so each warp store instruction writes every S-th slot.
template <typename T, int S>
__global__ void __launch_bounds__(kThreads) token_pool_backward_spread_kernel(const T* __restrict__ grad,
                                                                               int64_t units, int64_t tail,
                                                                               T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  constexpr int V = kVec<T>, U = 4;  // 4 grad loads in flight; the stores need no latency hiding
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  const acc_t div = acc_t(S);
  for (int64_t u0 = tid; u0 < units; u0 += U * step) {
    Vec<T> g[U];
#pragma unroll
    for (int a = 0; a < U; ++a) {
      const int64_t u = u0 + a * step;
      if (u < units) g[a] = load_vec(grad + u * V);
    }
#pragma unroll
    for (int a = 0; a < U; ++a) {
      const int64_t u = u0 + a * step;
      if (u >= units) break;
      T val[V];
#pragma unroll
      for (int j = 0; j < V; ++j) val[j] = from_acc<T>(to_acc<acc_t>(g[a].v[j]) / div);
#pragma unroll
      for (int s = 0; s < S; ++s) {
        Vec<T> o;
#pragma unroll
        for (int i = 0; i < V; ++i) o.v[i] = val[(s * V + i) / S];
        store_vec(out + (u * S + s) * V, o);
      }
    }
  }
  if (tid < tail) {
    const int64_t j = units * V + tid;
    const T v = from_acc<T>(to_acc<acc_t>(grad[j]) / div);
    for (int k = 0; k < S; ++k) out[j * S + k] = v;
  }
}

// index_t is uint32_t when every index fits: 64-bit division would cost more than the memory access.
template <typename T, typename index_t>
__global__ void __launch_bounds__(kThreads) token_pool_kernel(const T* __restrict__ x, index_t rows, index_t n,
                                                               index_t stride, index_t n_out, T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  const index_t total = rows * n_out;
  const index_t step = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t i0 = blockIdx.x * static_cast<index_t>(kThreads) + threadIdx.x; i0 < total; i0 += kScalarUnroll * step) {
    acc_t sum[kScalarUnroll];
    index_t count[kScalarUnroll];
#pragma unroll
    for (int u = 0; u < kScalarUnroll; ++u) {
      const index_t i = i0 + u * step;
      sum[u] = 0;
      count[u] = 1;
      if (i < total) {
        const index_t r = i / n_out, j = i - r * n_out;
        const index_t lo = j * stride, hi = min(n, lo + stride);
        const T* p = x + static_cast<int64_t>(r) * n;
        for (index_t k = lo; k < hi; ++k) sum[u] += to_acc<acc_t>(p[k]);
        count[u] = hi - lo;
      }
    }
#pragma unroll
    for (int u = 0; u < kScalarUnroll; ++u) {
      const index_t i = i0 + u * step;
      if (i < total) out[i] = from_acc<T>(sum[u] / static_cast<acc_t>(count[u]));
    }
  }
}

template <typename T, typename index_t>
__global__ void __launch_bounds__(kThreads) token_pool_backward_kernel(const T* __restrict__ grad, index_t rows,
                                                                        index_t n, index_t stride, index_t n_out,
                                                                        T* __restrict__ out) {
  using acc_t = typename AccType<T>::type;
  const index_t total = rows * n;
  const index_t step = static_cast<index_t>(gridDim.x) * kThreads;
  for (index_t i0 = blockIdx.x * static_cast<index_t>(kThreads) + threadIdx.x; i0 < total; i0 += kScalarUnroll * step) {
    acc_t v[kScalarUnroll];
#pragma unroll
    for (int u = 0; u < kScalarUnroll; ++u) {
      const index_t i = i0 + u * step;
      v[u] = 0;
      if (i < total) {
        const index_t r = i / n, k = i - r * n;
        const index_t j = k / stride;
        const index_t count = min(stride, n - j * stride);
        v[u] = to_acc<acc_t>(grad[static_cast<int64_t>(r) * n_out + j]) / static_cast<acc_t>(count);
      }
    }
#pragma unroll
    for (int u = 0; u < kScalarUnroll; ++u) {
      const index_t i = i0 + u * step;
      if (i < total) out[i] = from_acc<T>(v[u]);
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// The 32-bit kernels index up to total + one grid of unrolled steps past it.
bool fits_u32(int64_t total) {
  return total + int64_t(kScalarUnroll) * kThreads * kSms * kBlocksPerSm < (int64_t(1) << 32);
}

// Calls f(std::integral_constant<int, S>) for the strides with a vector kernel; false for the others.
template <typename F>
bool with_vec_stride(int64_t stride, F&& f) {
  switch (stride) {
    case 1: f(std::integral_constant<int, 1>{}); return true;
    case 2: f(std::integral_constant<int, 2>{}); return true;
    case 3: f(std::integral_constant<int, 3>{}); return true;
    case 4: f(std::integral_constant<int, 4>{}); return true;
    case 8: f(std::integral_constant<int, 8>{}); return true;
    default: return false;
  }
}

// A stride past n pools one window of the whole row, as stride n does: clamping keeps every index (and the
// kernels' stride argument, 32-bit where every index fits) within range for any int64 stride.
int64_t effective_stride(int64_t n, int64_t stride) { return std::min(stride, std::max<int64_t>(n, 1)); }

bool small_indices(int64_t rows, int64_t n, int64_t stride) {
  return fits_u32(rows * n) && n + stride < (int64_t(1) << 32);  // lo + stride is formed before min(n, .)
}

}  // namespace

cudaError_t launch_token_pool(const void* x, int64_t rows, int64_t n, int64_t stride_in, void* out, DType dtype,
                              cudaStream_t stream) {
  const int64_t stride = effective_stride(n, stride_in);
  const int64_t n_out = ceil_div(n, stride);
  const int64_t total_out = rows * n_out;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    T* op = static_cast<T*>(out);
    constexpr int V = kVec<T>;
    const bool vec = n % stride == 0 && aligned16(x) && aligned16(out);
    if (vec && with_vec_stride(stride, [&](auto s) {
          constexpr int S = decltype(s)::value;
          const int64_t units = total_out / V, tail = total_out % V;
          token_pool_vec_kernel<T, S><<<grid_for(std::max(units, tail), int64_t(kThreads) * units_for<S>()), kThreads,
                                        0, stream>>>(xp, units, tail, op);
        })) {
      return;
    }
    const unsigned grid = grid_for(total_out, int64_t(kThreads) * kScalarUnroll);
    if (small_indices(rows, n, stride)) {
      token_pool_kernel<T, uint32_t><<<grid, kThreads, 0, stream>>>(xp, rows, n, stride, n_out, op);
    } else {
      token_pool_kernel<T, int64_t><<<grid, kThreads, 0, stream>>>(xp, rows, n, stride, n_out, op);
    }
  });
}

cudaError_t launch_token_pool_backward(const void* grad, int64_t rows, int64_t n, int64_t stride_in, void* out,
                                       DType dtype, cudaStream_t stream) {
  const int64_t stride = effective_stride(n, stride_in);
  const int64_t n_out = ceil_div(n, stride);
  const int64_t total_out = rows * n_out;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* gp = static_cast<const T*>(grad);
    T* op = static_cast<T*>(out);
    constexpr int V = kVec<T>;
    const bool vec = n % stride == 0 && aligned16(grad) && aligned16(out);
    if (vec && with_vec_stride(stride, [&](auto s) {
          constexpr int S = decltype(s)::value;
          if constexpr (V % S == 0 || S % V == 0) {
            const int64_t units = rows * n / V, tail = rows * n % V;  // output vectors
            token_pool_backward_vec_kernel<T, S><<<grid_for(std::max(units, tail), int64_t(kThreads) * 4), kThreads,
                                                   0, stream>>>(gp, units, tail, op);
          } else {
            const int64_t units = total_out / V, tail = total_out % V;  // grad vectors
            token_pool_backward_spread_kernel<T, S><<<grid_for(std::max(units, tail), int64_t(kThreads) * 4),
                                                      kThreads, 0, stream>>>(gp, units, tail, op);
          }
        })) {
      return;
    }
    const unsigned grid = grid_for(rows * n, int64_t(kThreads) * kScalarUnroll);
    if (small_indices(rows, n, stride)) {
      token_pool_backward_kernel<T, uint32_t><<<grid, kThreads, 0, stream>>>(gp, rows, n, stride, n_out, op);
    } else {
      token_pool_backward_kernel<T, int64_t><<<grid, kThreads, 0, stream>>>(gp, rows, n, stride, n_out, op);
    }
  });
}

}  // namespace dv365::cuda
