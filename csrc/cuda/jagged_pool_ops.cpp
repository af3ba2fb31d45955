// CUDA host side of jagged weighted mean pooling (kernels: csrc/cuda/jagged_pool.cu): checks with the CPU
// kernel's messages, allocation, the launches on the current stream and the device error flag.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <limits>

#include "cuda/host.h"
#include "cuda/jagged_pool.h"

namespace dv365::cuda {
namespace {

struct Checked {
  at::Tensor ids, offsets, weights;  // weights: acc dtype or undefined
};

const void* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

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

at::Tensor jagged_mean_pool_cuda(const at::Tensor& table, const at::Tensor& ids, const at::Tensor& offsets,
                                 const std::optional<at::Tensor>& weights, bool sparse) {
  constexpr const char* op = "jagged_mean_pool";
  const c10::cuda::CUDAGuard guard(table.device());
  auto rerun = [&] {
    rerun_on_cpu<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            bool)>("dv365::jagged_mean_pool", table.cpu(), ids.cpu(), offsets.cpu(), to_cpu(weights),
                                   sparse);
  };
  const auto acc = table.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto in = check_inputs(op, table, "table", acc, ids, offsets, weights, rerun);
  const int64_t m = offsets.numel() - 1, n = ids.numel(), d = table.size(1), r = table.size(0);
  const at::Tensor tab = table.stride(1) == 1 ? table : table.contiguous();
  auto out = at::empty({m, d}, table.options());
  auto flag = new_error_flag(table);
  check_offsets_async(in.offsets, n, flag, op);
  if (m == 0 || d == 0) {
    check_error_flag(flag, op, rerun);
    return out;
  }
  auto num = at::zeros({m, d}, table.options().dtype(acc));
  auto den = at::zeros({m}, table.options().dtype(acc));
  check_launch(launch_jagged_mean_pool(tab.const_data_ptr(), dtype_of(table.scalar_type()), r, tab.stride(0), d,
                                       in.ids.const_data_ptr<int64_t>(), in.offsets.const_data_ptr<int64_t>(), m, n,
                                       data_or_null(in.weights), num.mutable_data_ptr(), den.mutable_data_ptr(),
                                       out.mutable_data_ptr(), flag.mutable_data_ptr<int32_t>(), current_stream()),
               op);
  check_error_flag(flag, op, rerun);
  return out;
}

at::Tensor backward_impl(bool rows, const char* op, const at::Tensor& grad, const at::Tensor& ids,
                         const at::Tensor& offsets, const std::optional<at::Tensor>& weights, int64_t num_rows) {
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
  auto flag = new_error_flag(grad);
  check_offsets_async(in.offsets, n, flag, op);
  if (n == 0 || d == 0 || m == 0) {
    check_error_flag(flag, op, rerun);
    return out.to(grad.scalar_type());
  }
  auto den = at::empty({m}, grad.options().dtype(acc));
  check_launch(launch_jagged_mean_pool_backward(rows, g.const_data_ptr(), dtype_of(grad.scalar_type()), d,
                                                in.ids.const_data_ptr<int64_t>(), num_rows,
                                                in.offsets.const_data_ptr<int64_t>(), m, n, data_or_null(in.weights),
                                                den.mutable_data_ptr(), out.mutable_data_ptr(),
                                                flag.mutable_data_ptr<int32_t>(), current_stream()),
               op);
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
