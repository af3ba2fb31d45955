// Token-axis strided mean pooling between funnel blocks (paper 2.3.2; dv365_ops.reference.token_pool):
// x [..., N] -> [..., ceil(N / stride)], each output the mean of its window, the last window averaging
// what it has.
//
// Two layouts. The FSA hands over [B, N, D] activations transposed to [B, D, N], so the last axis has
// stride D: there ("token-major") each window is `stride` adjacent D-rows, pooled with contiguous vector
// loads, and the output keeps the same transposed layout (a contiguous [..., n_out, D] buffer seen as
// [..., D, n_out]), so neither side copies. Any other input is made contiguous and pooled along its rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../dv365.h"
#include "../token_pool_layout.h"
#include "checks/token_pool.h"
#include "cpu_dispatch.h"

namespace dv365 {
namespace {

// elements per parallel chunk: enough work to amortize a task on a small machine
constexpr int64_t kGrainElems = 1 << 15;

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

using checks::token_pool::num_windows;

// dst[j] = src[j] / count, as the reference divides. Multiplying by 1 / count gives the same bits when
// count is a power of two (the usual strides 2 and 4) and is several times cheaper than a division.
template <typename T, typename A>
DV365_ALWAYS_INLINE void store_mean(const A* __restrict__ src, T* __restrict__ dst, int64_t d, int64_t count) {
  const A c = static_cast<A>(count);
  if ((count & (count - 1)) == 0) {
    const A inv = A(1) / c;
    for (int64_t j = 0; j < d; ++j) {
      dst[j] = static_cast<T>(src[j] * inv);
    }
  } else {
    for (int64_t j = 0; j < d; ++j) {
      dst[j] = static_cast<T>(src[j] / c);
    }
  }
}

// ---- forward ----

// windows [lo, hi) of y [L, n, D] contiguous -> out [L, n_out, D]
template <typename T>
DV365_ALWAYS_INLINE void pool_token_major(const T* __restrict__ y, T* __restrict__ out, int64_t n, int64_t d,
                                          int64_t stride, int64_t lo, int64_t hi) {
  using A = acc_t<T>;
  const int64_t n_out = num_windows(n, stride);
  std::vector<A> acc(d);
  A* __restrict__ a = acc.data();
  for (int64_t w = lo; w < hi; ++w) {
    const int64_t l = w / n_out, o = w % n_out;
    const int64_t t0 = o * stride, count = std::min(stride, n - t0);
    const T* __restrict__ src = y + (l * n + t0) * d;
    T* __restrict__ dst = out + w * d;
    if (count == 2) {  // the funnel's stride: one pass
      const T* __restrict__ src1 = src + d;
      for (int64_t j = 0; j < d; ++j) {
        dst[j] = static_cast<T>((static_cast<A>(src[j]) + static_cast<A>(src1[j])) * A(0.5));
      }
      continue;
    }
    for (int64_t j = 0; j < d; ++j) {
      a[j] = static_cast<A>(src[j]);
    }
    for (int64_t k = 1; k < count; ++k) {
      const T* __restrict__ row = src + k * d;
      for (int64_t j = 0; j < d; ++j) {
        a[j] += static_cast<A>(row[j]);
      }
    }
    store_mean(a, dst, d, count);
  }
}
DV365_CPU_DISPATCH(pool_token_major)

// rows [lo, hi) of x [rows, n] contiguous -> out [rows, n_out]
template <typename T>
DV365_ALWAYS_INLINE void pool_rows(const T* __restrict__ x, T* __restrict__ out, int64_t n, int64_t stride,
                                   int64_t lo, int64_t hi) {
  using A = acc_t<T>;
  const int64_t n_out = num_windows(n, stride);
  const int64_t full = n / stride;
  const A c = static_cast<A>(stride);
  for (int64_t r = lo; r < hi; ++r) {
    const T* __restrict__ xr = x + r * n;
    T* __restrict__ orow = out + r * n_out;
    if (stride == 2) {
      for (int64_t o = 0; o < full; ++o) {
        orow[o] = static_cast<T>((static_cast<A>(xr[2 * o]) + static_cast<A>(xr[2 * o + 1])) * A(0.5));
      }
    } else {
      for (int64_t o = 0; o < full; ++o) {
        A acc = static_cast<A>(xr[o * stride]);
        for (int64_t k = 1; k < stride; ++k) {
          acc += static_cast<A>(xr[o * stride + k]);
        }
        orow[o] = static_cast<T>(acc / c);
      }
    }
    if (full < n_out) {
      A acc = 0;
      for (int64_t t = full * stride; t < n; ++t) {
        acc += static_cast<A>(xr[t]);
      }
      orow[full] = static_cast<T>(acc / static_cast<A>(n - full * stride));
    }
  }
}
DV365_CPU_DISPATCH(pool_rows)

// ---- backward: grad_x[..., t] = grad[..., t / stride] / count(t / stride) ----

template <typename T>
DV365_ALWAYS_INLINE void spread_token_major(const T* __restrict__ g, T* __restrict__ gx, int64_t n, int64_t d,
                                            int64_t stride, int64_t lo, int64_t hi) {
  using A = acc_t<T>;
  const int64_t n_out = num_windows(n, stride);
  std::vector<A> acc(d);
  A* __restrict__ a = acc.data();
  for (int64_t w = lo; w < hi; ++w) {
    const int64_t l = w / n_out, o = w % n_out;
    const int64_t t0 = o * stride, count = std::min(stride, n - t0);
    const T* __restrict__ src = g + w * d;
    T* __restrict__ dst = gx + (l * n + t0) * d;
    for (int64_t j = 0; j < d; ++j) {
      a[j] = static_cast<A>(src[j]);
    }
    store_mean(a, dst, d, count);
    for (int64_t k = 1; k < count; ++k) {
      std::copy(dst, dst + d, dst + k * d);
    }
  }
}
DV365_CPU_DISPATCH(spread_token_major)

template <typename T>
DV365_ALWAYS_INLINE void spread_rows(const T* __restrict__ g, T* __restrict__ gx, int64_t n, int64_t stride,
                                     int64_t lo, int64_t hi) {
  using A = acc_t<T>;
  const int64_t n_out = num_windows(n, stride);
  const int64_t full = n / stride;
  const bool pow2 = (stride & (stride - 1)) == 0;
  const A count = static_cast<A>(stride), inv = A(1) / count;
  for (int64_t r = lo; r < hi; ++r) {
    const T* __restrict__ gr = g + r * n_out;
    T* __restrict__ xr = gx + r * n;
    if (stride == 2) {
      for (int64_t o = 0; o < full; ++o) {
        const T v = static_cast<T>(static_cast<A>(gr[o]) * A(0.5));
        xr[2 * o] = v;
        xr[2 * o + 1] = v;
      }
    } else {
      for (int64_t o = 0; o < full; ++o) {
        const A g_o = static_cast<A>(gr[o]);
        const T v = static_cast<T>(pow2 ? g_o * inv : g_o / count);
        std::fill(xr + o * stride, xr + (o + 1) * stride, v);
      }
    }
    if (full < n_out) {
      const A c = static_cast<A>(n - full * stride);
      const T v = static_cast<T>(static_cast<A>(gr[full]) / c);
      std::fill(xr + full * stride, xr + n, v);
    }
  }
}
DV365_CPU_DISPATCH(spread_rows)

// parallel chunks of about kGrainElems elements over `units` units of `unit_elems` each
template <typename F>
void parallel_units(int64_t units, int64_t unit_elems, const F& f) {
  at::parallel_for(0, units, std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, unit_elems)), f);
}

at::Tensor token_pool_cpu(const at::Tensor& x, int64_t stride) {
  constexpr const char* op = "token_pool";
  checks::token_pool::forward_args(op, x, stride);
  const int64_t n = x.size(-1), n_out = num_windows(n, stride);
  const bool transposed = token_major(x);
  at::Tensor out = empty_like_layout(x, n_out, transposed);
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "token_pool", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (transposed) {
      const int64_t d = x.size(-2), l_count = x.numel() / (n * d);
      const scalar_t* y = x.const_data_ptr<scalar_t>();
      parallel_units(l_count * n_out, d * stride, [&](int64_t lo, int64_t hi) {
        pool_token_major_dispatch(y, o, n, d, stride, lo, hi);
      });
    } else {
      const at::Tensor xc = x.contiguous();
      const scalar_t* xp = xc.const_data_ptr<scalar_t>();
      parallel_units(x.numel() / n, n, [&](int64_t lo, int64_t hi) { pool_rows_dispatch(xp, o, n, stride, lo, hi); });
    }
  });
  return out;
}

// ---- backward: grad_x[..., t] = grad[..., t / stride] / count(t / stride) ----

at::Tensor token_pool_backward_cpu(const at::Tensor& grad, int64_t stride, int64_t n) {
  constexpr const char* op = "token_pool_backward";
  checks::token_pool::backward_args(op, grad, stride, n);
  const int64_t n_out = num_windows(n, stride);
  const bool transposed = token_major(grad);
  at::Tensor gx = empty_like_layout(grad, n, transposed);
  if (gx.numel() == 0) {
    return gx;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "token_pool_backward", [&] {
    scalar_t* o = gx.mutable_data_ptr<scalar_t>();
    if (transposed) {
      const int64_t d = grad.size(-2), l_count = grad.numel() / (n_out * d);
      const scalar_t* gp = grad.const_data_ptr<scalar_t>();
      parallel_units(l_count * n_out, d * stride, [&](int64_t lo, int64_t hi) {
        spread_token_major_dispatch(gp, o, n, d, stride, lo, hi);
      });
    } else {
      const at::Tensor gc = grad.contiguous();
      const scalar_t* gp = gc.const_data_ptr<scalar_t>();
      parallel_units(grad.numel() / n_out, n, [&](int64_t lo, int64_t hi) { spread_rows_dispatch(gp, o, n, stride, lo, hi); });
    }
  });
  return gx;
}

}  // namespace
}  // namespace dv365

TORCH_LIBRARY_IMPL(dv365, CPU, m) {
  m.impl("token_pool", &dv365::token_pool_cpu);
  m.impl("token_pool_backward", &dv365::token_pool_backward_cpu);
}
