// Input checks of jagged weighted mean pooling and its two backward ops, written once for the CPU kernel
// (csrc/cpu/jagged_pool.cpp) and the CUDA host (csrc/cuda/jagged_pool_ops.cpp): the metadata rules with their
// messages, and the messages of the data rules (offsets, ids, weights) from the few values that break them,
// which the CPU kernel finds by reading the inputs and the CUDA kernels by recording the first offending index
// on the device. dv365_ops/jagged.py restates the metadata rules for the fake and Triton paths;
// tests/test_bad_inputs.py holds every backend to one table of messages.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "dv365.h"

namespace dv365::checks::jagged {

inline bool has_weights(const std::optional<at::Tensor>& weights) { return weights.has_value() && weights->defined(); }

// The arguments every op of the family takes: `dense` is the forward's table or a backward's grad.
inline void args(const char* op, const at::Tensor& ids, const at::Tensor& offsets,
                 const std::optional<at::Tensor>& weights, const at::Tensor& dense, const char* dense_name) {
  DV365_CHECK(dense.dim() == 2, op, dense_name, " must be 2-D [rows, D], got ", dense.dim(), "-D");
  const auto st = dense.scalar_type();
  DV365_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kDouble, op, dense_name,
              " must be float32, bfloat16, float16 or float64, got ", st);
  DV365_CHECK(ids.dim() == 1, op, "ids must be 1-D, got ", ids.dim(), "-D");
  DV365_CHECK(ids.scalar_type() == at::kLong, op, "ids must be int64, got ", ids.scalar_type());
  DV365_CHECK(offsets.dim() == 1, op, "offsets must be 1-D, got ", offsets.dim(), "-D");
  DV365_CHECK(offsets.scalar_type() == at::kLong, op, "offsets must be int64, got ", offsets.scalar_type());
  DV365_CHECK(offsets.numel() >= 1, op, "offsets must have at least one element (offsets[0] == 0)");
  DV365_CHECK(ids.device() == dense.device(), op, "ids must be on the same device as ", dense_name, " (",
              dense.device(), "), got ", ids.device());
  DV365_CHECK(offsets.device() == dense.device(), op, "offsets must be on the same device as ", dense_name, " (",
              dense.device(), "), got ", offsets.device());
  if (has_weights(weights)) {
    const auto& w = *weights;
    DV365_CHECK(w.dim() == 1 && w.size(0) == ids.size(0), op, "weights must have shape [N] = [", ids.size(0),
                "] like ids, got ", w.sizes());
    const auto wt = w.scalar_type();
    DV365_CHECK(wt == at::kFloat || wt == at::kDouble || wt == at::kBFloat16 || wt == at::kHalf, op,
                "weights must be float32, float64, bfloat16 or float16, got ", wt);
    DV365_CHECK(w.device() == dense.device(), op, "weights must be on the same device as ", dense_name, " (",
                dense.device(), "), got ", w.device());
  }
}

// The backward ops' further rules; num_rows is nullopt for the per-event rows op, which has no table.
inline void backward_args(const char* op, const at::Tensor& grad, const at::Tensor& ids, const at::Tensor& offsets,
                          const std::optional<at::Tensor>& weights, std::optional<int64_t> num_rows) {
  args(op, ids, offsets, weights, grad, "grad");
  if (num_rows.has_value()) DV365_CHECK(*num_rows >= 0, op, "num_rows must be non-negative, got ", *num_rows);
  DV365_CHECK(grad.size(0) == offsets.numel() - 1, op, "grad must have one row per bag (", offsets.numel() - 1,
              "), got ", grad.size(0));
}

// ---- the data rules, in the order they are checked: offsets, then ids, then weights

// offsets [M + 1] against N ids: first its ends ...
inline void offsets_ends(const char* op, int64_t first, int64_t last, int64_t n) {
  DV365_CHECK(first == 0, op, "offsets[0] must be 0, got ", first);
  DV365_CHECK(last == n, op, "offsets[-1] must equal the number of ids (", n, "), got ", last);
}

// ... then offsets[b] <= offsets[b + 1] for every bag b, the first b that breaks it named
inline void offsets_step(const char* op, int64_t b, int64_t lo, int64_t hi) {
  DV365_CHECK(lo <= hi, op, "offsets must be non-decreasing, but offsets[", b, "] = ", lo, " > offsets[", b + 1,
              "] = ", hi);
}

// ids[i] = id indexes a table of num_rows rows
inline void id_in_range(const char* op, int64_t i, int64_t id, int64_t num_rows) {
  DV365_CHECK(static_cast<uint64_t>(id) < static_cast<uint64_t>(num_rows), op, "ids must be in [0, ", num_rows,
              "), got ids[", i, "] = ", id);
}

// weights[i] = w (in the accumulation dtype) is finite and non-negative
inline void weight_ok(const char* op, int64_t i, double w) {
  DV365_CHECK(w >= 0.0 && w - w == 0.0, op, "weights must be finite and non-negative, got weights[", i, "] = ", w);
}

}  // namespace dv365::checks::jagged
