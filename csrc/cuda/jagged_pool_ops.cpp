// CUDA host side of jagged weighted mean pooling (kernels: csrc/cuda/jagged_pool.cu): the family's checks
// (csrc/checks/jagged.h), allocation, the launches on the current stream, and the error record through which the
// kernels name the first bad offset, id or weight.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>

#include "checks/jagged.h"
#include "cuda/host.h"
#include "cuda/jagged_pool.h"

namespace dv365::cuda {
namespace {

// the error record's slots
enum Slot : int { kFirstStep = 0, kFirstBadId = 1, kFirstBadWeight = 2, kNumSlots = 3 };

struct Inputs {
  at::Tensor ids, offsets, weights;  // contiguous; weights: in the accumulation dtype, or undefined
};

const void* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

Inputs contiguous_inputs(const at::Tensor& ids, const at::Tensor& offsets, const std::optional<at::Tensor>& weights,
                         at::ScalarType acc) {
  Inputs in{ids.contiguous(), offsets.contiguous(), at::Tensor()};
  if (checks::jagged::has_weights(weights)) in.weights = weights->to(acc).contiguous();
  return in;
}

// offsets [m + 1] against the n ids, on the device: the first decreasing step is noted in the record
void check_offsets_async(const Inputs& in, ErrorRecord& record, const char* op) {
  check_launch(launch_check_offsets(in.offsets.const_data_ptr<int64_t>(), in.offsets.numel() - 1, in.ids.numel(),
                                    record.flag(), current_stream(), record.slot(kFirstStep)),
               op);
}

// Reads the record; on bad input raises the CPU kernel's message for the first rule broken (offsets, then ids
// against num_rows, then weights), reading only the few elements it names.
void raise_if_flagged(const char* op, ErrorRecord& record, const Inputs& in, int64_t num_rows) {
  if (!record.read()) return;
  const int32_t bits = record.bits();
  namespace J = checks::jagged;
  if (bits & kOffsetsBad) {
    const int64_t m = in.offsets.numel() - 1;
    J::offsets_ends(op, element_i64(in.offsets, 0), element_i64(in.offsets, m), in.ids.numel());
    const int64_t b = record.first(kFirstStep);
    if (b >= 0) J::offsets_step(op, b, element_i64(in.offsets, b), element_i64(in.offsets, b + 1));
  } else {
    const int64_t i = record.first(kFirstBadId);
    if (bits & kIdOutOfRange && i >= 0) J::id_in_range(op, i, element_i64(in.ids, i), num_rows);
    const int64_t w = record.first(kFirstBadWeight);
    if (bits & kWeightsBad && w >= 0) J::weight_ok(op, w, element_f64(in.weights, w));
  }
  raise_flagged(op, bits);
}

at::Tensor jagged_mean_pool_cuda(const at::Tensor& table, const at::Tensor& ids, const at::Tensor& offsets,
                                 const std::optional<at::Tensor>& weights, bool sparse) {
  constexpr const char* op = "jagged_mean_pool";
  checks::jagged::args(op, ids, offsets, weights, table, "table");
  const c10::cuda::CUDAGuard guard(table.device());
  const auto acc = table.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Inputs in = contiguous_inputs(ids, offsets, weights, acc);
  const int64_t m = offsets.numel() - 1, n = ids.numel(), d = table.size(1), r = table.size(0);
  const at::Tensor tab = table.stride(1) == 1 ? table : table.contiguous();
  auto out = at::empty({m, d}, table.options());
  ErrorRecord record(table, kNumSlots, op);
  check_offsets_async(in, record, op);
  if (m == 0 || d == 0) {
    raise_if_flagged(op, record, in, r);
    return out;
  }
  auto num = at::zeros({m, d}, table.options().dtype(acc));
  auto den = at::zeros({m}, table.options().dtype(acc));
  check_launch(launch_jagged_mean_pool(tab.const_data_ptr(), dtype_of(table.scalar_type()), r, tab.stride(0), d,
                                       in.ids.const_data_ptr<int64_t>(), in.offsets.const_data_ptr<int64_t>(), m, n,
                                       data_or_null(in.weights), num.mutable_data_ptr(), den.mutable_data_ptr(),
                                       out.mutable_data_ptr(), record.flag(), record.slot(kFirstBadId),
                                       record.slot(kFirstBadWeight), current_stream()),
               op);
  raise_if_flagged(op, record, in, r);
  return out;
}

// rows: the per-event backward (num_rows unused: ids index no table there)
at::Tensor backward_impl(bool rows, const char* op, const at::Tensor& grad, const at::Tensor& ids,
                         const at::Tensor& offsets, const std::optional<at::Tensor>& weights, int64_t num_rows) {
  checks::jagged::backward_args(op, grad, ids, offsets, weights,
                                rows ? std::nullopt : std::optional<int64_t>(num_rows));
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto acc = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Inputs in = contiguous_inputs(ids, offsets, weights, acc);
  const int64_t m = offsets.numel() - 1, n = ids.numel(), d = grad.size(1);
  const at::Tensor g = grad.contiguous();
  // the dense gradient accumulates with atomics in the accumulation dtype, then is cast once
  at::Tensor out = rows ? at::empty({n, d}, grad.options()) : at::zeros({num_rows, d}, grad.options().dtype(acc));
  ErrorRecord record(grad, kNumSlots, op);
  check_offsets_async(in, record, op);
  if (n == 0 || d == 0 || m == 0) {
    raise_if_flagged(op, record, in, num_rows);
    return out.to(grad.scalar_type());
  }
  auto den = at::empty({m}, grad.options().dtype(acc));
  check_launch(launch_jagged_mean_pool_backward(rows, g.const_data_ptr(), dtype_of(grad.scalar_type()), d,
                                                in.ids.const_data_ptr<int64_t>(), num_rows,
                                                in.offsets.const_data_ptr<int64_t>(), m, n, data_or_null(in.weights),
                                                den.mutable_data_ptr(), out.mutable_data_ptr(), record.flag(),
                                                record.slot(kFirstBadId), record.slot(kFirstBadWeight),
                                                current_stream()),
               op);
  raise_if_flagged(op, record, in, num_rows);
  return out.scalar_type() == grad.scalar_type() ? out : out.to(grad.scalar_type());
}

at::Tensor jagged_mean_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& ids, const at::Tensor& offsets,
                                          const std::optional<at::Tensor>& weights, int64_t num_rows) {
  return backward_impl(false, "jagged_mean_pool_backward", grad, ids, offsets, weights, num_rows);
}

at::Tensor jagged_mean_pool_backward_rows_cuda(const at::Tensor& grad, const at::Tensor& ids, const at::Tensor& offsets,
                                               const std::optional<at::Tensor>& weights) {
  return backward_impl(true, "jagged_mean_pool_backward_rows", grad, ids, offsets, weights, 0);
}

}  // namespace
}  // namespace dv365::cuda

TORCH_LIBRARY_IMPL(dv365, CUDA, m) {
  m.impl("jagged_mean_pool", &dv365::cuda::jagged_mean_pool_cuda);
  m.impl("jagged_mean_pool_backward", &dv365::cuda::jagged_mean_pool_backward_cuda);
  m.impl("jagged_mean_pool_backward_rows", &dv365::cuda::jagged_mean_pool_backward_rows_cuda);
}
