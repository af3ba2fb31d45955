// CUDA kernels of token-axis strided mean pooling (semantics: dv365_ops/reference.py token_pool).
// Memory-bound: one thread per output element; neighbouring threads read neighbouring windows, so each
// warp's loads cover one contiguous span and the caches merge them into full sectors.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda/common.cuh"

namespace dv365::cuda {
namespace {

constexpr int kUnroll = 4;  // outputs per thread per step, their loads issued together

// index_t is uint32_t when every index fits: 64-bit division would cost more than the memory access.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void token_pool_kernel(const scalar_t* __restrict__ x, index_t rows, index_t n, index_t stride,
                                  index_t n_out, scalar_t* __restrict__ out) {
  const index_t total = rows * n_out;
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i0 = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i0 < total; i0 += kUnroll * step) {
    acc_t sum[kUnroll];
    index_t count[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const index_t i = i0 + u * step;
      sum[u] = 0;
      count[u] = 1;
      if (i < total) {
        const index_t r = i / n_out, j = i - r * n_out;
        const index_t lo = j * stride, hi = min(n, lo + stride);
        const scalar_t* p = x + static_cast<int64_t>(r) * n;
        for (index_t k = lo; k < hi; ++k) sum[u] += static_cast<acc_t>(p[k]);
        count[u] = hi - lo;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const index_t i = i0 + u * step;
      if (i < total) out[i] = static_cast<scalar_t>(sum[u] / static_cast<acc_t>(count[u]));
    }
  }
}

template <typename scalar_t, typename acc_t, typename index_t>
__global__ void token_pool_backward_kernel(const scalar_t* __restrict__ grad, index_t rows, index_t n, index_t stride,
                                           index_t n_out, scalar_t* __restrict__ out) {
  const index_t total = rows * n;
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t i0 = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; i0 < total; i0 += kUnroll * step) {
    acc_t v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const index_t i = i0 + u * step;
      v[u] = 0;
      if (i < total) {
        const index_t r = i / n, k = i - r * n;
        const index_t j = k / stride;
        const index_t count = min(stride, n - j * stride);
        v[u] = static_cast<acc_t>(grad[static_cast<int64_t>(r) * n_out + j]) / static_cast<acc_t>(count);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const index_t i = i0 + u * step;
      if (i < total) out[i] = static_cast<scalar_t>(v[u]);
    }
  }
}

bool fits_u32(int64_t v) { return v < (int64_t(1) << 32); }

int64_t grid_for(int64_t total) { return std::max<int64_t>(1, std::min<int64_t>(ceil_div(total, 256 * kUnroll), 132 * 64)); }

at::Tensor token_pool_cuda(const at::Tensor& x, int64_t stride) {
  constexpr const char* op = "token_pool";
  check_like_cpu([&] {
    DV365_CHECK(stride >= 1, op, "stride must be >= 1, got ", stride);
    DV365_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension, got a 0-d tensor");
    DV365_CHECK(at::isFloatingType(x.scalar_type()), op, "x must be floating point, got ", x.scalar_type());
  }, [&] { rerun_on_cpu<at::Tensor(const at::Tensor&, int64_t)>("dv365::token_pool", x.cpu(), stride); });
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(-1);
  const int64_t n_out = ceil_div(n, stride);
  auto sizes = x.sizes().vec();
  sizes.back() = n_out;
  auto out = at::empty(sizes, x.options());
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous();
  const int64_t rows = xc.numel() / n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "token_pool_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    if (fits_u32(xc.numel() + int64_t(kUnroll) * 256 * 132 * 64)) {
      token_pool_kernel<scalar_t, acc_t, uint32_t><<<grid_for(rows * n_out), 256, 0, current_stream()>>>(
          xc.data_ptr<scalar_t>(), rows, n, stride, n_out, out.data_ptr<scalar_t>());
    } else {
      token_pool_kernel<scalar_t, acc_t, int64_t><<<grid_for(rows * n_out), 256, 0, current_stream()>>>(
          xc.data_ptr<scalar_t>(), rows, n, stride, n_out, out.data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor token_pool_backward_cuda(const at::Tensor& grad, int64_t stride, int64_t n) {
  constexpr const char* op = "token_pool_backward";
  check_like_cpu([&] {
    DV365_CHECK(stride >= 1, op, "stride must be >= 1, got ", stride);
    DV365_CHECK(n >= 0, op, "n must be >= 0, got ", n);
    DV365_CHECK(grad.dim() >= 1, op, "grad must have at least 1 dimension, got a 0-d tensor");
    DV365_CHECK(grad.size(-1) == ceil_div(n, stride), op, "grad must have ceil(n / stride) = ", ceil_div(n, stride),
                " entries on its last axis, got ", grad.size(-1));
    DV365_CHECK(at::isFloatingType(grad.scalar_type()), op, "grad must be floating point, got ", grad.scalar_type());
  }, [&] {
    rerun_on_cpu<at::Tensor(const at::Tensor&, int64_t, c10::SymInt)>("dv365::token_pool_backward", grad.cpu(), stride,
                                                                       c10::SymInt(n));
  });
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t n_out = grad.size(-1);
  auto sizes = grad.sizes().vec();
  sizes.back() = n;
  auto out = at::empty(sizes, grad.options());
  if (out.numel() == 0) return out;
  const at::Tensor g = grad.contiguous();
  const int64_t rows = out.numel() / n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "token_pool_backward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    if (fits_u32(out.numel() + int64_t(kUnroll) * 256 * 132 * 64)) {
      token_pool_backward_kernel<scalar_t, acc_t, uint32_t><<<grid_for(rows * n), 256, 0, current_stream()>>>(
          g.data_ptr<scalar_t>(), rows, n, stride, n_out, out.data_ptr<scalar_t>());
    } else {
      token_pool_backward_kernel<scalar_t, acc_t, int64_t><<<grid_for(rows * n), 256, 0, current_stream()>>>(
          g.data_ptr<scalar_t>(), rows, n, stride, n_out, out.data_ptr<scalar_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace dv365::cuda

TORCH_LIBRARY_IMPL(dv365, CUDA, m) {
  m.impl("token_pool", &dv365::cuda::token_pool_cuda);
  m.impl("token_pool_backward", &dv365::cuda::token_pool_backward_cuda);
}
