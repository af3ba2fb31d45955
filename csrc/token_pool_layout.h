// The output layout rule of token_pool and its backward, shared by the CPU kernel, the CUDA host code and
// (in Python) the fake impl in dv365_ops/token_pool.py: a token-major input (a non-contiguous tensor whose last
// two axes are a transposed contiguous buffer) gives a token-major output; any other input a contiguous one.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <utility>
#include <vector>

namespace dv365 {

inline bool token_major(const at::Tensor& t) {
  return t.dim() >= 2 && !t.is_contiguous() && t.transpose(-1, -2).is_contiguous();
}

// An uninitialized tensor shaped like `like` with last axis `last`, token-major when `transposed`.
inline at::Tensor empty_like_layout(const at::Tensor& like, int64_t last, bool transposed) {
  std::vector<int64_t> sizes(like.sizes().begin(), like.sizes().end());
  sizes.back() = last;
  if (!transposed) return at::empty(sizes, like.options());
  std::swap(sizes[sizes.size() - 1], sizes[sizes.size() - 2]);
  return at::empty(sizes, like.options()).transpose(-1, -2);
}

}  // namespace dv365
