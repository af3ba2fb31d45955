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

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
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
#include "cpu_dispatch.h"

namespace dv365 {
namespace {

constexpr int64_t kGrainRows = 256;

using checks::int4::tail_bytes;

// Row min / max, and whether every value is finite. Float selects do not vectorize under the default
// -ftrapping-math, so the reductions run on order-preserving integer keys of the float bits (negative
// floats get their magnitude bits flipped), and a value is non-finite when its exponent bits are all ones.
DV365_ALWAYS_INLINE int32_t order_key(float v) {
  const int32_t s = std::bit_cast<int32_t>(v);
  return s ^ ((s >> 31) & 0x7FFFFFFF);
}

DV365_ALWAYS_INLINE float from_order_key(int32_t k) { return std::bit_cast<float>(k ^ ((k >> 31) & 0x7FFFFFFF)); }

template <typename T>
DV365_ALWAYS_INLINE float to_float(T v) {
  return static_cast<float>(v);
}

// fp16 rows are widened into a float buffer first: c10::Half's conversion is branchy bit manipulation that
// does not vectorize, F16C's vcvtph2ps converts 8 at a time.
#if DV365_HAVE_AVX2_CLONE
DV365_TARGET_AVX2 void half_to_float_f16c(const c10::Half* __restrict__ x, float* __restrict__ y, int64_t d) {
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + j));
    _mm256_storeu_ps(y + j, _mm256_cvtph_ps(h));
  }
  for (; j < d; ++j) {
    y[j] = static_cast<float>(x[j]);
  }
}
#endif

inline void half_to_float(const c10::Half* __restrict__ x, float* __restrict__ y, int64_t d) {
#if DV365_HAVE_AVX2_CLONE
  if (cpu_has_avx2()) {
    half_to_float_f16c(x, y, d);
    return;
  }
#endif
  for (int64_t j = 0; j < d; ++j) {
    y[j] = static_cast<float>(x[j]);
  }
}

template <typename T>
DV365_ALWAYS_INLINE bool row_min_max(const T* __restrict__ x, int64_t d, float& mn, float& mx) {
  int32_t kmin = INT32_MAX, kmax = INT32_MIN, nonfinite = 0;
  for (int64_t j = 0; j < d; ++j) {
    const float v = to_float(x[j]);
    const int32_t k = order_key(v);
    kmin = std::min(kmin, k);
    kmax = std::max(kmax, k);
    nonfinite |= static_cast<int32_t>((std::bit_cast<int32_t>(v) & 0x7F800000) == 0x7F800000);
  }
  mn = d == 0 ? 0.0f : from_order_key(kmin);
  mx = d == 0 ? 0.0f : from_order_key(kmax);
  return nonfinite == 0;
}

// The sign of a zero row minimum, as fbgemm's AVX2 kernel picks it (dv365_ops.reference._int4_row_min): lane
// j % 8 of the first D / 8 * 8 columns keeps its last zero (min_ps returns its second operand on a tie), the
// lanes merge from lane 0 keeping the first, then the remaining columns keep the first. The order keys above
// rank -0 below +0, which fbgemm's bias bytes do not.
template <typename T>
DV365_ALWAYS_INLINE float fbgemm_zero(const T* __restrict__ x, int64_t d) {
  const int64_t nv = d / 8 * 8;
  for (int64_t lane = 0; lane < 8; ++lane) {
    for (int64_t j = nv - 8 + lane; j >= 0; j -= 8) {
      const float v = to_float(x[j]);
      if (v == 0.0f) return v;
    }
  }
  for (int64_t j = nv; j < d; ++j) {
    const float v = to_float(x[j]);
    if (v == 0.0f) return v;
  }
  return 0.0f;
}

enum class RowStatus : uint8_t { kOk, kNotFinite, kTooWide };

// clamp(round_half_even(v), 0, 15) for the v a finite row yields (|v| stays near [0, 15], far below 2^31):
// adding and subtracting 2^23 rounds half-to-even under the default rounding mode (a negative v lands at
// or below 0), and the clamp runs on the integer, where it vectorizes. NaN converts to INT32_MIN, then 0,
// as in the reference and fbgemm.
DV365_ALWAYS_INLINE uint8_t code(float v) {
  constexpr float kMagic = 8388608.0f;
  int32_t i = static_cast<int32_t>((v + kMagic) - kMagic);
  i = i < 0 ? 0 : i;
  i = i > 15 ? 15 : i;
  return static_cast<uint8_t>(i);
}

template <typename T>
DV365_ALWAYS_INLINE RowStatus quantize_row(const T* __restrict__ x, int64_t d, bool half_scale_bias,
                                           uint8_t* __restrict__ out, uint16_t* __restrict__ scratch) {
  float mn, mx;
  if (!row_min_max(x, d, mn, mx)) {
    return RowStatus::kNotFinite;
  }
  if (mn == 0.0f) {
    mn = fbgemm_zero(x, d);
  }
  float scale, bias, inv;
  if (half_scale_bias) {
    // fbgemm's FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf, step for step
    const uint16_t bias_h = c10::detail::fp16_ieee_from_fp32_value(mn);
    bias = c10::detail::fp16_ieee_to_fp32_value(bias_h);
    const float range = mx - bias;
    scale = c10::detail::fp16_ieee_to_fp32_value(
        c10::detail::fp16_ieee_from_fp32_value(range == 0.0f ? 1.0f : range / 15.0f));
    if (scale == 0.0f) {
      scale = 1.0f;
    }
    inv = 1.0f / scale;
    if (std::isinf(inv)) {
      scale = 1.0f;
      inv = 1.0f;
    }
    // fbgemm would store an infinite fp16 bias or scale here (|min| >= 65520, or a range beyond ~982800)
    if (std::isinf(scale) || std::isinf(bias)) {
      return RowStatus::kTooWide;
    }
    // the header's inline conversions: c10::Half's operator float is an out-of-line call, twice per row
    const uint16_t sb[2] = {c10::detail::fp16_ieee_from_fp32_value(scale), bias_h};
    std::memcpy(out + d / 2, sb, sizeof(sb));
  } else {
    bias = mn;
    // a denormal scale would have an infinite inverse (and flush to 0 where denormals do): FLT_MIN instead
    const float range = mx - mn;
    // a constant row gets +0 whichever signed zeros its max and min are
    scale = range > 0.0f ? (range < 15.0f * FLT_MIN ? FLT_MIN : range / 15.0f) : 0.0f;
    inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    // the top code must decode to a finite value (max - min overflows float32 for e.g. [-3e38, 3e38])
    if (std::isinf(15.0f * scale + bias)) {
      return RowStatus::kTooWide;
    }
    const float sb[2] = {scale, bias};
    std::memcpy(out + d / 2, sb, sizeof(sb));
  }
  // codes in a contiguous pass, then two per byte: both loops vectorize
  uint8_t* __restrict__ q = reinterpret_cast<uint8_t*>(scratch);
  for (int64_t j = 0; j < d; ++j) {
    q[j] = code((to_float(x[j]) - bias) * inv);
  }
  for (int64_t j = 0; j < d / 2; ++j) {
    const uint16_t pair = scratch[j];  // little-endian: column 2j in the low byte
    out[j] = static_cast<uint8_t>((pair | (pair >> 4)) & 0xFF);
  }
  return RowStatus::kOk;
}

// rows [lo, hi); stops at the first row that cannot be encoded, leaving its index in *bad_row
template <typename T>
DV365_ALWAYS_INLINE void quantize_rows(const T* x, int64_t row_stride, int64_t d, bool half_scale_bias, uint8_t* out,
                                       int64_t w, int64_t lo, int64_t hi, int64_t* bad_row) {
  std::vector<uint16_t> scratch(d / 2 + 1);
  std::vector<float> widened(std::is_same_v<T, c10::Half> ? d : 0);
  for (int64_t i = lo; i < hi; ++i) {
    RowStatus st;
    if constexpr (std::is_same_v<T, c10::Half>) {
      half_to_float(x + i * row_stride, widened.data(), d);
      st = quantize_row(widened.data(), d, half_scale_bias, out + i * w, scratch.data());
    } else {
      st = quantize_row(x + i * row_stride, d, half_scale_bias, out + i * w, scratch.data());
    }
    if (st != RowStatus::kOk) {
      *bad_row = i;
      return;
    }
  }
}
DV365_CPU_DISPATCH(quantize_rows)

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
      quantize_rows_dispatch(x_p, row_stride, d, half_scale_bias, out_p, w, lo, hi, &bad);
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

template <typename T>
DV365_ALWAYS_INLINE void dequantize_rows(const uint8_t* __restrict__ packed, int64_t row_stride, int64_t d, bool half_scale_bias,
                     T* __restrict__ out, int64_t lo, int64_t hi) {
  for (int64_t i = lo; i < hi; ++i) {
    const uint8_t* row = packed + i * row_stride;
    float scale, bias;
    if (half_scale_bias) {
      c10::Half sb[2];
      std::memcpy(sb, row + d / 2, sizeof(sb));
      scale = static_cast<float>(sb[0]);
      bias = static_cast<float>(sb[1]);
    } else {
      float sb[2];
      std::memcpy(sb, row + d / 2, sizeof(sb));
      scale = sb[0];
      bias = sb[1];
    }
    T* o = out + i * d;
    for (int64_t j = 0; j < d / 2; ++j) {
      const uint8_t byte = row[j];
      const float lo_v = static_cast<float>(byte & 0xF) * scale + bias;
      const float hi_v = static_cast<float>(byte >> 4) * scale + bias;
      o[2 * j] = static_cast<T>(lo_v);
      o[2 * j + 1] = static_cast<T>(hi_v);
    }
  }
}
DV365_CPU_DISPATCH(dequantize_rows)

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
      dequantize_rows_dispatch(p, row_stride, d, half_scale_bias, o, lo, hi);
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
