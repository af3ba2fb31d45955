// int4 rowwise codes (docs/design.md#int4-rows; format in dv365_ops.reference.int4_quantize): each row of D values
// becomes D/2 code bytes then the scale and the bias (fp32, or fp16 with half_scale_bias).
//
// The codes must be byte-identical to the reference (and, for the half variant, to fbgemm's
// FloatToFusedNBitRowwiseQuantizedSBHalf), so the arithmetic is the reference's, step for step, in float32:
// (x - bias) * inv rounded half-to-even, and q * scale + bias on the way back. A fused multiply-add would
// round once instead of twice and change a few codes; contraction is off for this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "cpu_dispatch.h"
#if DV365_HAVE_AVX2_COPY
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "../dv365.h"
#include "checks/int4.h"

namespace dv365 {
namespace {

constexpr int64_t kGrainRows = 256;

using checks::int4::tail_bytes;

#define DV365_ISA_KERNELS "int4_kernels.inc"
#include "cpu_isa_copies.inc"

at::Tensor int4_quantize_cpu(const at::Tensor& x_in, bool half_scale_bias) {
  constexpr const char* op = "int4_quantize";
  checks::int4::quantize_args(op, x_in);
  const int64_t r = x_in.size(0), d = x_in.size(1);
  // rows may be strided; values within a row must be adjacent
  const at::Tensor x = (x_in.stride(1) == 1 || d <= 1) ? x_in : x_in.contiguous();
  const int64_t row_stride = x.stride(0);
  const int64_t w = d / 2 + tail_bytes(half_scale_bias);
  at::Tensor out = at::empty({r, w}, x.options().dtype(at::kByte));
  if (r == 0) {
    return out;
  }
  uint8_t* out_p = out.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "int4_quantize", [&] {
    const scalar_t* x_p = x.const_data_ptr<scalar_t>();
    std::atomic<int64_t> first_bad{r};
    at::parallel_for(0, r, kGrainRows, [&](int64_t lo, int64_t hi) {
      int64_t bad = -1;
      DV365_ISA_CALL(quantize_rows(x_p, row_stride, d, half_scale_bias, out_p, w, lo, hi, &bad));
      int64_t cur = first_bad.load(std::memory_order_relaxed);
      while (bad >= 0 && bad < cur && !first_bad.compare_exchange_weak(cur, bad)) {
      }
    });
    // the first row that cannot be encoded names the error
    const int64_t i = first_bad.load();
    if (i < r) {
      std::vector<float> row(d);
      for (int64_t j = 0; j < d; ++j) {
        row[j] = static_cast<float>(x_p[i * row_stride + j]);
      }
      checks::int4::raise_unencodable_row(op, i, row.data(), d, half_scale_bias);
    }
  });
  return out;
}


at::Tensor int4_dequantize_cpu(const at::Tensor& packed_in, bool half_scale_bias, std::optional<at::ScalarType> dtype) {
  constexpr const char* op = "int4_dequantize";
  const at::ScalarType out_type = dtype.value_or(at::kFloat);
  checks::int4::dequantize_args(op, packed_in, half_scale_bias, out_type);
  const int64_t tb = tail_bytes(half_scale_bias);
  const int64_t r = packed_in.size(0), d = 2 * (packed_in.size(1) - tb);
  const at::Tensor packed = packed_in.stride(1) == 1 ? packed_in : packed_in.contiguous();
  at::Tensor out = at::empty({r, d}, packed.options().dtype(out_type));
  if (r == 0 || d == 0) {
    return out;
  }
  const uint8_t* p = packed.const_data_ptr<uint8_t>();
  const int64_t row_stride = packed.stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out_type, "int4_dequantize", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, r, kGrainRows, [&](int64_t lo, int64_t hi) {
      DV365_ISA_CALL(dequantize_rows(p, row_stride, d, half_scale_bias, o, lo, hi));
    });
  });
  return out;
}

}  // namespace
}  // namespace dv365

TORCH_LIBRARY_IMPL(dv365, CPU, m) {
  m.impl("int4_quantize", &dv365::int4_quantize_cpu);
  m.impl("int4_dequantize", &dv365::int4_dequantize_cpu);
}
