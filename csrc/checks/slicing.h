// The metadata checks of the slicing ops (slice_timeline, sliced_pool, sliced_pool_backward[_rows]): devices,
// dtypes, ranks and shapes, one message each, made by the CPU host (csrc/cpu/slicing.cpp) and the CUDA host
// (csrc/cuda/slicing/ops.cpp) alike, in the same order, so both raise the same error for the same input
// (dv365_ops/slicing.py mirrors them for the fakes and the Triton wrappers; tests/test_bad_inputs.py holds them to
// one message). Devices come first: every tensor lives on ts's device, so no other message names a device.
// The data checks (offsets, ascending ts, categorical values, id ranges) need the values and stay with each
// kernel; the program's entries are checked where the program is read.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <utility>

#include "dv365.h"

namespace dv365::checks {

inline void same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                        const char* ref_name) {
  DV365_CHECK(t.device() == ref.device(), op, name, " must be on the same device as ", ref_name, " (", ref.device(),
              "), got ", t.device());
}

inline bool is_pooled_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

// The timeline (ids per table, offsets [B + 1], ts [N], cats [C, N], floats [F, N], request_ts [B]) and the
// program's devices. The program's shapes: program_shapes.
inline void timeline(const char* op, at::TensorList ids, const at::Tensor& offsets, const at::Tensor& ts,
                     const at::Tensor& cats, const at::Tensor& floats, const at::Tensor& request_ts,
                     const at::Tensor& prog_i, const at::Tensor& prog_f) {
  for (const auto& [t, name] : {std::pair{&offsets, "offsets"}, {&cats, "cats"}, {&floats, "floats"},
                                {&request_ts, "request_ts"}, {&prog_i, "prog_i"}, {&prog_f, "prog_f"}}) {
    same_device(op, name, *t, ts, "ts");
  }
  for (const auto& i : ids) same_device(op, "ids", i, ts, "ts");
  for (const auto& [t, name] : {std::pair{&offsets, "offsets"}, {&ts, "ts"}, {&request_ts, "request_ts"}}) {
    DV365_CHECK(t->scalar_type() == at::kLong, op, name, " must be Long, got ", t->scalar_type());
    DV365_CHECK(t->dim() == 1, op, name, " must be 1-D, got shape ", t->sizes());
  }
  DV365_CHECK(offsets.numel() >= 1, op, "offsets must have B + 1 >= 1 entries");
  const int64_t b = offsets.numel() - 1, n = ts.numel();
  DV365_CHECK(request_ts.numel() == b, op, "request_ts must have shape [B=", b, "], got ", request_ts.sizes());
  DV365_CHECK(cats.dim() == 2 && cats.size(1) == n, op, "cats must have shape [C, N=", n, "], got ", cats.sizes());
  DV365_CHECK(at::isIntegralType(cats.scalar_type(), /*includeBool=*/false), op,
              "cats must be an integer tensor (int8), got ", cats.scalar_type());
  DV365_CHECK(floats.scalar_type() == at::kFloat, op, "floats must be float32, got ", floats.scalar_type());
  DV365_CHECK(floats.dim() == 2 && floats.size(1) == n, op, "floats must have shape [F, N=", n, "], got ",
              floats.sizes());
  for (size_t t = 0; t < ids.size(); ++t) {
    DV365_CHECK(ids[t].scalar_type() == at::kLong && ids[t].dim() == 1 && ids[t].numel() == n, op, "ids[", t,
                "] must be a 1-D int64 tensor of N=", n, " events, got ", ids[t].scalar_type(), " ", ids[t].sizes());
  }
}

// prog_i [S, kNumInt] int64 and prog_f [S, kNumFloat] float64.
inline void program_shapes(const char* op, const at::Tensor& prog_i, const at::Tensor& prog_f) {
  DV365_CHECK(prog_i.dim() == 2 && prog_i.size(1) == prog::kNumInt && prog_i.scalar_type() == at::kLong, op,
              "prog_i must be an int64 tensor of shape [S, ", int64_t(prog::kNumInt), "], got ", prog_i.scalar_type(),
              " ", prog_i.sizes());
  DV365_CHECK(prog_f.dim() == 2 && prog_f.size(0) == prog_i.size(0) && prog_f.size(1) == prog::kNumFloat &&
                  prog_f.scalar_type() == at::kDouble,
              op, "prog_f must be a float64 tensor of shape [S=", prog_i.size(0), ", ", int64_t(prog::kNumFloat),
              "], got ", prog_f.scalar_type(), " ", prog_f.sizes());
}

// sliced_pool's tables: at least one, one per ids tensor, on ts's device, 2-D [rows, D] of one floating dtype and
// one D.
inline void tables(const char* op, at::TensorList tables, at::TensorList ids, const at::Tensor& ts) {
  DV365_CHECK(!tables.empty(), op, "tables must hold at least one table");
  DV365_CHECK(ids.size() == tables.size(), op, "ids must hold one tensor per table (", tables.size(), "), got ",
              ids.size());
  const at::ScalarType dt = tables[0].scalar_type();
  DV365_CHECK(is_pooled_dtype(dt), op, "tables must be float32, bfloat16, float16 or float64, got ", dt);
  for (size_t t = 0; t < tables.size(); ++t) {
    same_device(op, "tables", tables[t], ts, "ts");
    DV365_CHECK(tables[t].dim() == 2, op, "tables[", t, "] must be 2-D [rows, D], got ", tables[t].sizes());
    DV365_CHECK(tables[t].scalar_type() == dt, op, "tables must share one dtype: tables[0] is ", dt, ", tables[", t,
                "] is ", tables[t].scalar_type());
    DV365_CHECK(tables[t].size(1) == tables[0].size(1), op, "tables must share D: tables[0] has ", tables[0].size(1),
                ", tables[", t, "] has ", tables[t].size(1));
  }
}

// The backward ops' grad [B, S, D] (a floating dtype) and weight_sum [B, S] (float32), on ts's device.
inline void backward(const char* op, const at::Tensor& grad, const at::Tensor& weight_sum, const at::Tensor& ts,
                     int64_t b, int64_t s) {
  same_device(op, "grad", grad, ts, "ts");
  same_device(op, "weight_sum", weight_sum, ts, "ts");
  DV365_CHECK(is_pooled_dtype(grad.scalar_type()), op, "grad must be float32, bfloat16, float16 or float64, got ",
              grad.scalar_type());
  DV365_CHECK(grad.dim() == 3 && grad.size(0) == b && grad.size(1) == s, op, "grad must be a tensor of shape [B=", b,
              ", S=", s, ", D], got ", grad.sizes());
  DV365_CHECK(weight_sum.scalar_type() == at::kFloat && weight_sum.dim() == 2 && weight_sum.size(0) == b &&
                  weight_sum.size(1) == s,
              op, "weight_sum must be a float32 tensor of shape [B=", b, ", S=", s, "], got ", weight_sum.scalar_type(),
              " ", weight_sum.sizes());
}

// sliced_pool_backward's num_rows: one entry per table, each >= 0.
inline void num_rows(const char* op, c10::ArrayRef<int64_t> rows, int64_t num_tables) {
  DV365_CHECK(static_cast<int64_t>(rows.size()) == num_tables, op, "num_rows must hold one entry per table (",
              num_tables, "), got ", rows.size());
  for (const int64_t r : rows) DV365_CHECK(r >= 0, op, "num_rows must be >= 0, got ", r);
}

}  // namespace dv365::checks
