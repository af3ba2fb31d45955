// Input checks of the int4 rowwise codes, written once for the CPU kernel (csrc/cpu/int4.cpp) and the CUDA
// host (csrc/cuda/int4_ops.cpp): the metadata rules with their messages, and the message of a row that cannot
// be encoded, built from that one row. dv365_ops/int4.py restates the metadata rules for the fake and Triton
// paths; tests/test_bad_inputs.py holds every backend to one table of messages.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "dv365.h"

namespace dv365::checks::int4 {

// bytes of scale and bias at the end of a row: two fp16 or two fp32
inline int64_t tail_bytes(bool half_scale_bias) { return half_scale_bias ? 4 : 8; }

inline void quantize_args(const char* op, const at::Tensor& x) {
  DV365_CHECK(x.dim() == 2, op, "x must be 2-D [R, D], got ", x.dim(), "-D");
  const auto st = x.scalar_type();
  DV365_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op,
              "x must be float32, bfloat16 or float16, got ", st);
  DV365_CHECK(x.size(1) % 2 == 0, op, "x must have an even number of columns D (two codes per byte), got D = ",
              x.size(1));
}

inline void dequantize_args(const char* op, const at::Tensor& packed, bool half_scale_bias, at::ScalarType out_dtype) {
  const int64_t tail = tail_bytes(half_scale_bias);
  DV365_CHECK(packed.dim() == 2, op, "packed must be 2-D [R, D/2 + ", tail, "], got ", packed.dim(), "-D");
  DV365_CHECK(packed.scalar_type() == at::kByte, op, "packed must be uint8, got ", packed.scalar_type());
  DV365_CHECK(packed.size(1) >= tail, op, "packed must have D/2 code bytes plus ", tail,
              " scale/bias bytes per row (at least ", tail, " columns), got ", packed.size(1));
  DV365_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf, op,
              "dtype must be float32, bfloat16 or float16, got ", out_dtype);
}

// Raises the error of row `i` of x, which a kernel found it cannot encode; `row` holds its d values as float32
// (the kernels widen bf16 / fp16 exactly). The message names the row's span, its minimum's zero signed as the
// kernels pick it (fbgemm's order, dv365_ops.reference._int4_row_min), so every backend prints the same text.
inline void raise_unencodable_row(const char* op, int64_t i, const float* row, int64_t d,
                                  bool half_scale_bias) {
  float mn = 0.0f, mx = 0.0f;
  for (int64_t j = 0; j < d; ++j) {
    const float v = row[j];
    DV365_CHECK(v - v == 0.0f, op, "x must be finite (found NaN or Inf)");
    if (j == 0 || v < mn) mn = v;
    if (j == 0 || v > mx) mx = v;
  }
  if (mn == 0.0f) {
    // lane j % 8 of the first d / 8 * 8 columns keeps its last zero, the lanes merge from lane 0 keeping the
    // first, then the remaining columns keep the first
    const int64_t nv = d / 8 * 8;
    bool found = false;
    for (int64_t lane = 0; lane < 8 && !found; ++lane) {
      for (int64_t j = nv - 8 + lane; j >= 0 && !found; j -= 8) {
        if (row[j] == 0.0f) mn = row[j], found = true;
      }
    }
    for (int64_t j = nv; j < d && !found; ++j) {
      if (row[j] == 0.0f) mn = row[j], found = true;
    }
  }
  if (half_scale_bias) {
    DV365_RAISE("dv365::", op, ": row ", i, " of x spans [", mn, ", ", mx,
                "], beyond float16 scale/bias (half_scale_bias=True): fp16(min) or fp16((max - bias) / 15) is "
                "infinite; keep |min| < 65520 and max - min < 982800, or use half_scale_bias=False");
  }
  DV365_RAISE("dv365::", op, ": row ", i, " of x spans [", mn, ", ", mx,
              "], too wide for float32 codes: its top code decodes to 15 * scale + bias = inf (keep max - min "
              "below about 3.4e38)");
}

}  // namespace dv365::checks::int4
