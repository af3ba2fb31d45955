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
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
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

#define DV365_ISA_KERNELS "token_pool_kernels.inc"
#include "cpu_isa_copies.inc"

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
        DV365_ISA_CALL(pool_token_major(y, o, n, d, stride, lo, hi));
      });
    } else {
      const at::Tensor xc = x.contiguous();
      const scalar_t* xp = xc.const_data_ptr<scalar_t>();
      parallel_units(x.numel() / n, n, [&](int64_t lo, int64_t hi) { DV365_ISA_CALL(pool_rows(xp, o, n, stride, lo, hi)); });
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
        DV365_ISA_CALL(spread_token_major(gp, o, n, d, stride, lo, hi));
      });
    } else {
      const at::Tensor gc = grad.contiguous();
      const scalar_t* gp = gc.const_data_ptr<scalar_t>();
      parallel_units(grad.numel() / n_out, n, [&](int64_t lo, int64_t hi) { DV365_ISA_CALL(spread_rows(gp, o, n, stride, lo, hi)); });
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
