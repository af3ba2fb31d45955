// Launchers of the token-axis mean pooling kernels (csrc/cuda/token_pool.cu; host side: token_pool_ops.cpp).
#pragma once

#include "cuda/launch.h"

namespace dv365::cuda {

// out [rows, ceil(n / stride)] = window means of the contiguous x [rows, n].
cudaError_t launch_token_pool(const void* x, int64_t rows, int64_t n, int64_t stride, void* out, DType dtype,
                              cudaStream_t stream);

// out [rows, n] = grad [rows, ceil(n / stride)] spread over each window, divided by the window's size.
cudaError_t launch_token_pool_backward(const void* grad, int64_t rows, int64_t n, int64_t stride, void* out,
                                       DType dtype, cudaStream_t stream);

}  // namespace dv365::cuda
