// Input checks of token-axis strided mean pooling and its backward, written once for the CPU kernel
// (csrc/cpu/token_pool.cpp) and the CUDA host (csrc/cuda/token_pool_ops.cpp). dv365_ops/token_pool.py restates
// them for the fake path; tests/test_bad_inputs.py holds every backend to one table of messages.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "dv365.h"

namespace dv365::checks::token_pool {

// ceil(n / stride) without forming n + stride - 1, which overflows for a stride near INT64_MAX
inline int64_t num_windows(int64_t n, int64_t stride) { return n == 0 ? 0 : (n - 1) / stride + 1; }

inline void floating(const char* op, const char* name, const at::Tensor& t) {
  const auto st = t.scalar_type();
  DV365_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, op, name,
              " must be float32, float64, bfloat16 or float16, got ", st);
}

inline void forward_args(const char* op, const at::Tensor& x, int64_t stride) {
  DV365_CHECK(stride >= 1, op, "stride must be >= 1, got ", stride);
  DV365_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension (tokens on the last axis), got a 0-d tensor");
  floating(op, "x", x);
}

inline void backward_args(const char* op, const at::Tensor& grad, int64_t stride, int64_t n) {
  DV365_CHECK(stride >= 1, op, "stride must be >= 1, got ", stride);
  DV365_CHECK(n >= 0, op, "n must be >= 0, got ", n);
  DV365_CHECK(grad.dim() >= 1, op, "grad must have at least 1 dimension, got a 0-d tensor");
  floating(op, "grad", grad);
  const int64_t n_out = num_windows(n, stride);
  DV365_CHECK(grad.size(-1) == n_out, op, "grad must have ceil(n / stride) = ", n_out,
              " entries on its last axis, got ", grad.size(-1));
}

}  // namespace dv365::checks::token_pool
