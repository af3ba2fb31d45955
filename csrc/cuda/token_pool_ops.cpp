// CUDA host side of token-axis strided mean pooling (kernels: csrc/cuda/token_pool.cu): the family's checks
// (csrc/checks/token_pool.h), allocation, and the launches on the current stream.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "checks/token_pool.h"
#include "cuda/host.h"
#include "cuda/token_pool.h"
#include "token_pool_layout.h"

namespace dv365::cuda {
namespace {

using checks::token_pool::num_windows;

// The kernels write a contiguous result; a token-major input (token_pool_layout.h) gets it copied into that
// layout, as the CPU kernel returns it.
at::Tensor in_layout_of(const at::Tensor& like, const at::Tensor& result) {
  if (!token_major(like)) return result;
  at::Tensor out = empty_like_layout(result, result.size(-1), /*transposed=*/true);
  out.copy_(result);
  return out;
}

at::Tensor token_pool_cuda(const at::Tensor& x, int64_t stride) {
  constexpr const char* op = "token_pool";
  checks::token_pool::forward_args(op, x, stride);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(-1);
  const int64_t n_out = num_windows(n, stride);
  auto sizes = x.sizes().vec();
  sizes.back() = n_out;
  auto out = at::empty(sizes, x.options());
  if (out.numel() == 0) return in_layout_of(x, out);
  const at::Tensor xc = x.contiguous();
  const int64_t rows = xc.numel() / n;
  check_launch(launch_token_pool(xc.const_data_ptr(), rows, n, stride, out.mutable_data_ptr(),
                                 dtype_of(x.scalar_type()), current_stream()),
               op);
  return in_layout_of(x, out);
}

at::Tensor token_pool_backward_cuda(const at::Tensor& grad, int64_t stride, int64_t n) {
  constexpr const char* op = "token_pool_backward";
  checks::token_pool::backward_args(op, grad, stride, n);
  const c10::cuda::CUDAGuard guard(grad.device());
  auto sizes = grad.sizes().vec();
  sizes.back() = n;
  auto out = at::empty(sizes, grad.options());
  if (out.numel() == 0) return in_layout_of(grad, out);
  const at::Tensor g = grad.contiguous();
  const int64_t rows = out.numel() / n;
  check_launch(launch_token_pool_backward(g.const_data_ptr(), rows, n, stride, out.mutable_data_ptr(),
                                          dtype_of(grad.scalar_type()), current_stream()),
               op);
  return in_layout_of(grad, out);
}

}  // namespace
}  // namespace dv365::cuda

TORCH_LIBRARY_IMPL(dv365, CUDA, m) {
  m.impl("token_pool", &dv365::cuda::token_pool_cuda);
  m.impl("token_pool_backward", &dv365::cuda::token_pool_backward_cuda);
}
