// CUDA kernels of jagged weighted mean pooling (semantics: dv365_ops/reference.py jagged_mean_pool).
//
// Events are cut into fixed chunks that may span bags, so a 70,000-event bag is spread over many CTAs and
// ten-event bags share one; each CTA keeps one running sum per column and flushes it with an atomic add
// when the bag changes. A second pass divides by the weight sum.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda/common.cuh"

namespace dv365::cuda {
namespace {

constexpr int kChunk = 128;  // events per CTA
constexpr int kUnroll = 8;   // rows loaded before the first is used

__device__ __forceinline__ int64_t bag_of(const int64_t* __restrict__ offsets, int64_t m, int64_t e) {
  // last bag b in [0, m) with offsets[b] <= e
  int64_t lo = 0, hi = m;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= e) lo = mid; else hi = mid;
  }
  return lo;
}

template <typename scalar_t, typename idx_t, typename acc_t>
__global__ void pool_sum_kernel(const scalar_t* __restrict__ table, int64_t num_rows, int64_t row_stride, int64_t d,
                                const idx_t* __restrict__ ids, const int64_t* __restrict__ offsets, int64_t m,
                                int64_t n, const acc_t* __restrict__ weights, acc_t* __restrict__ num,
                                acc_t* __restrict__ den, int32_t* flag) {
  const int64_t e0 = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t e1 = min(n, e0 + kChunk);
  const int64_t col = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const bool owns_den = blockIdx.y == 0 && threadIdx.x == 0;
  if (col >= d && !owns_den) return;
  const int64_t c = col < d ? col : 0;
  int64_t bag = bag_of(offsets, m, e0);
  int64_t bag_end = offsets[bag + 1];
  acc_t acc = 0, wsum = 0;
  for (int64_t base = e0; base < e1; base += kUnroll) {
    acc_t x[kUnroll], w[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u;
      x[u] = 0;
      w[u] = 0;
      if (e < e1) {
        const int64_t id = static_cast<int64_t>(ids[e]);
        if (id < 0 || id >= num_rows) {
          set_error(flag, kIdOutOfRange);
        } else {
          w[u] = weights ? weights[e] : acc_t(1);
          if (!(w[u] >= acc_t(0) && isfinite(w[u]))) set_error(flag, kWeightsBad);
          x[u] = static_cast<acc_t>(table[id * row_stride + c]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t e = base + u;
      if (e >= e1) break;
      while (e >= bag_end && bag < m - 1) {
        if (col < d) atomicAdd(num + bag * d + col, acc);
        if (owns_den) atomicAdd(den + bag, wsum);
        acc = 0;
        wsum = 0;
        ++bag;
        bag_end = offsets[bag + 1];
      }
      acc += w[u] * x[u];
      wsum += w[u];
    }
  }
  if (col < d) atomicAdd(num + bag * d + col, acc);
  if (owns_den) atomicAdd(den + bag, wsum);
}

template <typename scalar_t, typename acc_t>
__global__ void normalize_kernel(const acc_t* __restrict__ num, const acc_t* __restrict__ den, int64_t m, int64_t d,
                                 scalar_t* __restrict__ out) {
  const int64_t total = m * d;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t s = den[i / d];
    out[i] = static_cast<scalar_t>(s > 0 ? num[i] / s : acc_t(0));
  }
}

// den[b] = sum of the bag's weights (one warp per bag)
template <typename acc_t>
__global__ void bag_weight_sum_kernel(const int64_t* __restrict__ offsets, int64_t m, int64_t n,
                                      const acc_t* __restrict__ weights, acc_t* __restrict__ den, int32_t* flag) {
  const int64_t bag = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (bag >= m) return;
  const int64_t lo = max(int64_t(0), min(n, offsets[bag]));
  const int64_t hi = max(lo, min(n, offsets[bag + 1]));
  acc_t s = 0;
  if (weights) {
    for (int64_t e = lo + lane; e < hi; e += 32) {
      const acc_t w = weights[e];
      if (!(w >= acc_t(0) && isfinite(w))) set_error(flag, kWeightsBad);
      s += w;
    }
  } else {
    s = lane == 0 ? static_cast<acc_t>(hi - lo) : acc_t(0);
  }
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) den[bag] = s;
}

// Backward: grad_table[ids[e]] += w_e / den[bag] * grad[bag] (kRows: rows[e] = w_e / den[bag] * grad[bag]).
template <bool kRows, typename scalar_t, typename idx_t, typename acc_t, typename out_t>
__global__ void pool_backward_kernel(const scalar_t* __restrict__ grad, int64_t d, const idx_t* __restrict__ ids,
                                     int64_t num_rows, const int64_t* __restrict__ offsets, int64_t m, int64_t n,
                                     const acc_t* __restrict__ weights, const acc_t* __restrict__ den,
                                     out_t* __restrict__ out, int32_t* flag) {
  const int64_t e0 = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t e1 = min(n, e0 + kChunk);
  const int64_t col = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (col >= d) return;
  int64_t bag = bag_of(offsets, m, e0);
  int64_t bag_end = offsets[bag + 1];
  acc_t g = static_cast<acc_t>(grad[bag * d + col]);
  acc_t inv = den[bag] > 0 ? acc_t(1) / den[bag] : acc_t(0);
  for (int64_t e = e0; e < e1; ++e) {
    while (e >= bag_end && bag < m - 1) {
      ++bag;
      bag_end = offsets[bag + 1];
      g = static_cast<acc_t>(grad[bag * d + col]);
      inv = den[bag] > 0 ? acc_t(1) / den[bag] : acc_t(0);
    }
    const acc_t w = weights ? weights[e] : acc_t(1);
    const int64_t id = static_cast<int64_t>(ids[e]);
    const bool ok = id >= 0 && id < num_rows;
    if (!ok && col == 0) set_error(flag, kIdOutOfRange);
    if constexpr (kRows) {
      out[e * d + col] = static_cast<out_t>(ok ? w * inv * g : acc_t(0));
    } else {
      if (ok) atomicAdd(out + id * d + col, w * inv * g);
    }
  }
}

struct Checked {
  at::Tensor ids, offsets, weights;  // weights: acc dtype or undefined
};

// Metadata checks (the CPU kernel's rules; its messages win through rerun).
template <typename Rerun>
Checked check_inputs(const char* op, const at::Tensor& dense, const char* dense_name, at::ScalarType acc,
                     const at::Tensor& ids, const at::Tensor& offsets, const std::optional<at::Tensor>& weights,
                     Rerun&& rerun) {
  const bool has_w = weights.has_value() && weights->defined();
  check_device(ids, op, "ids", dense, dense_name);
  check_device(offsets, op, "offsets", dense, dense_name);
  if (has_w) check_device(*weights, op, "weights", dense, dense_name);
  check_like_cpu([&] {
    const auto st = dense.scalar_type();
    DV365_CHECK(dense.dim() == 2, op, dense_name, " must be 2-D [rows, D], got ", dense.dim(), "-D");
    DV365_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kDouble, op, dense_name,
                " must be float32, bfloat16, float16 or float64, got ", st);
    DV365_CHECK(ids.dim() == 1, op, "ids must be 1-D, got ", ids.dim(), "-D");
    DV365_CHECK(ids.scalar_type() == at::kLong, op, "ids must be int64, got ", ids.scalar_type());
    DV365_CHECK(offsets.dim() == 1, op, "offsets must be 1-D, got ", offsets.dim(), "-D");
    DV365_CHECK(offsets.scalar_type() == at::kLong, op, "offsets must be int64, got ", offsets.scalar_type());
    DV365_CHECK(offsets.numel() >= 1, op, "offsets must have at least one element (offsets[0] == 0)");
    if (has_w) {
      DV365_CHECK(weights->dim() == 1 && weights->size(0) == ids.size(0), op, "weights must have shape [N] = [",
                  ids.size(0), "], got ", weights->sizes());
      const auto wt = weights->scalar_type();
      DV365_CHECK(wt == at::kFloat || wt == at::kDouble || wt == at::kBFloat16 || wt == at::kHalf, op,
                  "weights must be float32, float64, bfloat16 or float16, got ", wt);
    }
  }, rerun);
  Checked c{ids.contiguous(), offsets.contiguous(), at::Tensor()};
  if (has_w) c.weights = weights->to(acc).contiguous();
  return c;
}

int grid_threads(int64_t d) { return static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, ceil_div(d, 32) * 32))); }

at::Tensor jagged_mean_pool_cuda(const at::Tensor& table, const at::Tensor& ids, const at::Tensor& offsets,
                                 const std::optional<at::Tensor>& weights, bool sparse) {
  constexpr const char* op = "jagged_mean_pool";
  const c10::cuda::CUDAGuard guard(table.device());
  const auto acc = table.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto rerun = [&] {
    rerun_on_cpu<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            bool)>("dv365::jagged_mean_pool", table.cpu(), ids.cpu(), offsets.cpu(), to_cpu(weights),
                                   sparse);
  };
  auto in = check_inputs(op, table, "table", acc, ids, offsets, weights, rerun);
  const int64_t m = offsets.numel() - 1, n = ids.numel(), d = table.size(1), r = table.size(0);
  const at::Tensor tab = table.stride(1) == 1 ? table : table.contiguous();
  auto out = at::empty({m, d}, table.options());
  auto flag = new_error_flag(table);
  check_offsets_async(in.offsets, n, flag);
  if (m == 0 || d == 0) {
    check_error_flag(flag, op, rerun);
    return out;
  }
  auto num = at::zeros({m, d}, table.options().dtype(acc));
  auto den = at::zeros({m}, table.options().dtype(acc));
  auto stream = current_stream();
  const int threads = grid_threads(d);
  if (n > 0) {
    const dim3 grid(static_cast<unsigned>(ceil_div(n, kChunk)), static_cast<unsigned>(ceil_div(d, threads)));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "jagged_mean_pool_cuda", [&] {
      using acc_t = typename AccType<scalar_t>::type;
      pool_sum_kernel<scalar_t, int64_t, acc_t><<<grid, threads, 0, stream>>>(
          tab.data_ptr<scalar_t>(), r, tab.stride(0), d, in.ids.data_ptr<int64_t>(), in.offsets.data_ptr<int64_t>(), m,
          n, in.weights.defined() ? in.weights.data_ptr<acc_t>() : nullptr, num.data_ptr<acc_t>(),
          den.data_ptr<acc_t>(), flag.data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "jagged_mean_pool_norm", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const int64_t blocks = std::min<int64_t>(ceil_div(m * d, 256), 65535);
    normalize_kernel<scalar_t, acc_t><<<blocks, 256, 0, stream>>>(num.data_ptr<acc_t>(), den.data_ptr<acc_t>(), m, d,
                                                                  out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  check_error_flag(flag, op, rerun);
  return out;
}

template <bool kRows, typename scalar_t, typename acc_t>
void launch_backward(dim3 grid, int threads, cudaStream_t stream, const at::Tensor& g, int64_t d, const Checked& in,
                     int64_t num_rows, int64_t m, int64_t n, const acc_t* w, const at::Tensor& den, at::Tensor& out,
                     const at::Tensor& flag) {
  using out_t = std::conditional_t<kRows, scalar_t, acc_t>;
  pool_backward_kernel<kRows, scalar_t, int64_t, acc_t, out_t><<<grid, threads, 0, stream>>>(
      g.data_ptr<scalar_t>(), d, in.ids.data_ptr<int64_t>(), num_rows, in.offsets.data_ptr<int64_t>(), m, n, w,
      den.data_ptr<acc_t>(), out.data_ptr<out_t>(), flag.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor backward_impl(bool rows, const char* op, const at::Tensor& grad, const at::Tensor& ids, const at::Tensor& offsets,
                         const std::optional<at::Tensor>& weights, int64_t num_rows) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto rerun = [&] {
    if (rows) {
      rerun_on_cpu<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&)>(
          "dv365::jagged_mean_pool_backward_rows", grad.cpu(), ids.cpu(), offsets.cpu(), to_cpu(weights));
    } else {
      rerun_on_cpu<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                              c10::SymInt)>("dv365::jagged_mean_pool_backward", grad.cpu(), ids.cpu(), offsets.cpu(),
                                            to_cpu(weights), c10::SymInt(num_rows));
    }
  };
  auto in = check_inputs(op, grad, "grad", acc, ids, offsets, weights, rerun);
  check_like_cpu([&] {
    DV365_CHECK(grad.size(0) == offsets.numel() - 1, op, "grad must have one row per bag (", offsets.numel() - 1,
                "), got ", grad.size(0));
    DV365_CHECK(num_rows >= 0, op, "num_rows must be non-negative, got ", num_rows);
  }, rerun);
  const int64_t m = offsets.numel() - 1, n = ids.numel(), d = grad.size(1);
  const at::Tensor g = grad.contiguous();
  const int64_t out_rows = rows ? n : num_rows;
  // the dense gradient accumulates with atomics in the accumulation dtype, then is cast once
  at::Tensor out = rows ? at::empty({n, d}, grad.options()) : at::zeros({out_rows, d}, grad.options().dtype(acc));
  if (n == 0 || d == 0 || m == 0) {
    auto flag = new_error_flag(grad);
    check_offsets_async(in.offsets, n, flag);
    check_error_flag(flag, op, rerun);
    return out.to(grad.scalar_type());
  }
  auto den = at::empty({m}, grad.options().dtype(acc));
  auto flag = new_error_flag(grad);
  auto stream = current_stream();
  check_offsets_async(in.offsets, n, flag);
  const int threads = grid_threads(d);
  const dim3 grid(static_cast<unsigned>(ceil_div(n, kChunk)), static_cast<unsigned>(ceil_div(d, threads)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "jagged_mean_pool_backward_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    const acc_t* w = in.weights.defined() ? in.weights.data_ptr<acc_t>() : nullptr;
    bag_weight_sum_kernel<acc_t><<<static_cast<unsigned>(ceil_div(m * 32, 256)), 256, 0, stream>>>(
        in.offsets.data_ptr<int64_t>(), m, n, w, den.data_ptr<acc_t>(), flag.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (rows) {
      launch_backward<true, scalar_t, acc_t>(grid, threads, stream, g, d, in, num_rows, m, n, w, den, out, flag);
    } else {
      launch_backward<false, scalar_t, acc_t>(grid, threads, stream, g, d, in, num_rows, m, n, w, den, out, flag);
    }
  });
  check_error_flag(flag, op, rerun);
  return out.scalar_type() == grad.scalar_type() ? out : out.to(grad.scalar_type());
}

at::Tensor jagged_mean_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& ids, const at::Tensor& offsets,
                                          const std::optional<at::Tensor>& weights, int64_t num_rows) {
  return backward_impl(false, "jagged_mean_pool_backward", grad, ids, offsets, weights, num_rows);
}

at::Tensor jagged_mean_pool_backward_rows_cuda(const at::Tensor& grad, const at::Tensor& ids, const at::Tensor& offsets,
                                               const std::optional<at::Tensor>& weights) {
  return backward_impl(true, "jagged_mean_pool_backward_rows", grad, ids, offsets, weights,
                             std::numeric_limits<int64_t>::max());
}

}  // namespace
}  // namespace dv365::cuda

TORCH_LIBRARY_IMPL(dv365, CUDA, m) {
  m.impl("jagged_mean_pool", &dv365::cuda::jagged_mean_pool_cuda);
  m.impl("jagged_mean_pool_backward", &dv365::cuda::jagged_mean_pool_backward_cuda);
  m.impl("jagged_mean_pool_backward_rows", &dv365::cuda::jagged_mean_pool_backward_rows_cuda);
}
