// CUDA kernels of the int4 rowwise codes (semantics and byte layout: dv365_ops/reference.py int4_quantize).
//
// Arithmetic uses explicit round-to-nearest intrinsics so no multiply-add is fused, and the scale is a true
// division by 15 (as on the CPU, in Triton and in fbgemm): the bytes do not depend on the device.
//
// Both directions stream: per row, one read of the input and one write of the output. A row is split into
// chunks of 8 columns (4 code bytes) and owned by L lanes of a warp (L a power of two <= 32, several rows per
// warp when rows are short), each lane holding K chunks in registers, so the quantizer reads the row once,
// reduces min/max with shuffles over the L lanes and encodes from registers. K is picked so a lane moves at
// least 32 bytes of the wide side (2 x 16-byte loads of float32, or 2 of 16-bit types): 2048 resident
// threads x 32 bytes is 64 KB in flight per SM, about twice what ~4 TB/s x ~1 us of latency needs. The
// dequantizer's chunks are instead the codes of one 16-byte store (4 columns of float32, 8 of 16-bit types), so
// each of its store instructions covers one contiguous span of a row. Rows not a multiple of 8 columns,
// unaligned rows, or rows too long for registers (> 2048 columns) take the loop kernels: a warp per row,
// scalar (or vector) loads, the row read twice.
#include <algorithm>
#include <cfloat>

#include "cuda/device.cuh"
#include "cuda/int4.h"

namespace dv365::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kMaxRegCols = 2048;  // longer rows take the loop kernels

// Min, max and a non-finite check of one element, three instructions: fminf/fmaxf drop a NaN (torch.amin/amax
// would propagate it, but a non-finite row only has to raise: its bytes are never returned), so the check is
// kept apart in `bad`, which stays 0 while every v is finite (0 * v = +-0) and becomes NaN at the first NaN or
// inf (0 * inf = NaN). A sum of the v would flag a finite row whose sum overflows.
__device__ __forceinline__ void min_max(float v, float& mn, float& mx, float& bad) {
  mn = fminf(mn, v);
  mx = fmaxf(mx, v);
  bad = __fmaf_rn(v, 0.f, bad);
}

// min and max over the `lanes` lanes of a row (a power of two, every lane of the warp taking part)
__device__ __forceinline__ void reduce_min_max(float& mn, float& mx, int lanes) {
  for (int o = lanes / 2; o > 0; o /= 2) {
    mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, o));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  }
}

// Eight consecutive elements as floats, with 16-byte loads (the caller checks the alignment).
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[8]) {
  if constexpr (sizeof(T) == 4) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
    union {
      uint4 raw;
      T h[8];
    } u;
    u.raw = __ldg(reinterpret_cast<const uint4*>(p));
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = to_float(u.h[i]);
  }
}

// Outputs of T in one 16-byte store.
template <typename T>
constexpr int kStoreCols = 16 / sizeof(T);

// kStoreCols<T> floats stored as T with one 16-byte store (the caller checks the alignment). Through a uint4 for
// every T: a float4 assignment here compiled to four 4-byte stores.
template <typename T>
__device__ __forceinline__ void store16(T* p, const float (&v)[kStoreCols<T>]) {
  union {
    uint4 raw;
    T h[kStoreCols<T>];
  } u;
#pragma unroll
  for (int i = 0; i < kStoreCols<T>; ++i) u.h[i] = from_acc<T>(v[i]);
  *reinterpret_cast<uint4*>(p) = u.raw;
}

// clamp(round_half_even(x), 0, 15) in two instructions: cvt.rni.u32.f32 rounds half to even and clamps to
// [0, 2^32 - 1] (any negative x, -0.5 < x < 0 included, gives 0; NaN gives 0, as torch's NaN clamps to NaN and
// casts to 0 as uint8), then one integer min.
__device__ __forceinline__ uint32_t code(float v, float bias, float inv) {
  return min(__float2uint_rn(__fmul_rn(__fsub_rn(v, bias), inv)), 15u);
}

__device__ __forceinline__ float dequant(uint32_t q, float scale, float bias) {
  return __fadd_rn(__fmul_rn(static_cast<float>(q), scale), bias);
}

struct ScaleBias {
  float scale, bias, inv;
};

// The sign of a zero row minimum, picked in fbgemm's AVX2 order (dv365_ops.reference._int4_row_min): column
// j < nv = D / 8 * 8 ranks by lane j % 8, then the last j of the lane first; the remaining columns rank after
// them, the first first. The rank and the value's sign bit pack into one key; the smallest key wins.
constexpr unsigned long long kNoZero = ~0ull;

__device__ __forceinline__ unsigned long long zero_key(int64_t j, int64_t nv, float v) {
  const unsigned long long rank = j < nv ? (static_cast<unsigned long long>(j % 8) << 40) + (nv - 1 - j) / 8
                                         : (8ull << 40) + static_cast<unsigned long long>(j - nv);
  return (rank << 1) | (__float_as_uint(v) >> 31);
}

__device__ __forceinline__ unsigned long long min_key(unsigned long long a, unsigned long long b) {
  return b < a ? b : a;
}

// The smallest key over the `lanes` lanes of a row (a power of two, every lane of the warp taking part),
// turned into the signed zero it names.
__device__ __forceinline__ float reduce_zero(unsigned long long key, int lanes) {
  for (int o = lanes / 2; o > 0; o /= 2) key = min_key(key, __shfl_xor_sync(0xffffffffu, key, o));
  return __uint_as_float(static_cast<uint32_t>(key & 1) << 31);
}

// The row's scale, bias and inverse scale from its min and max (exactly the reference's formulas).
template <bool kHalf>
__device__ __forceinline__ ScaleBias scale_bias(float mn, float mx) {
  ScaleBias s;
  if constexpr (kHalf) {
    s.bias = __half2float(__float2half_rn(mn));
    const float rng = __fsub_rn(mx, s.bias);
    s.scale = __half2float(__float2half_rn(rng == 0.f ? 1.f : __fdiv_rn(rng, 15.f)));
    s.inv = __fdiv_rn(1.f, s.scale);
    if (s.scale == 0.f || isinf(s.inv)) {
      s.scale = 1.f;
      s.inv = 1.f;
    }
  } else {
    s.bias = mn;
    const float rng = __fsub_rn(mx, mn);
    // a denormal scale would have an infinite inverse: FLT_MIN instead, decided on the range
    // a constant row gets +0 whichever signed zeros its max and min are
    s.scale = rng > 0.f ? (rng < 15.f * FLT_MIN ? FLT_MIN : __fdiv_rn(rng, 15.f)) : 0.f;
    s.inv = s.scale > 0.f ? __fdiv_rn(1.f, s.scale) : 0.f;
  }
  return s;
}

// Whether the format holds the row: fp16 scale and bias finite; in fp32, the top code decodes to a finite value.
template <bool kHalf>
__device__ __forceinline__ bool encodable(const ScaleBias& s) {
  if constexpr (kHalf) {
    return !isinf(s.scale) && !isinf(s.bias);
  } else {
    return !isinf(dequant(15u, s.scale, s.bias));
  }
}

// Flags a row that cannot be encoded (non-finite, or too wide for its format) and notes it for the message.
template <bool kHalf>
__device__ __forceinline__ void report_row(float bad, const ScaleBias& s, int64_t row, int32_t* flag,
                                           int64_t* first_bad_row) {
  const bool not_finite = bad != 0.f, too_wide = !encodable<kHalf>(s);
  if (not_finite) set_error(flag, kNotFinite);
  if (too_wide) set_error(flag, kNotEncodable);
  if (not_finite || too_wide) note_first(first_bad_row, row);
}

template <bool kHalf>
__device__ __forceinline__ void store_tail(uint8_t* t, const ScaleBias& s) {
  if constexpr (kHalf) {
    // Explicit little-endian bytes (the row's tail need not be 2-byte aligned), each shifted out of one 32-bit
    // word. Bytes stored straight from the 16-bit registers of two fp16 conversions (st.global.u8 of a
    // cvt.rn.f16.f32 result) came out wrong on the H200 (low bytes 0 or 1; suspected ptxas miscompile).
    const __half2 sb = __floats2half2_rn(s.scale, s.bias);  // scale in the low half: bytes 0-1
    uint32_t word;
    memcpy(&word, &sb, 4);
#pragma unroll
    for (int i = 0; i < 4; ++i) t[i] = static_cast<uint8_t>(word >> (8 * i));
  } else {
    memcpy(t, &s.scale, 4);
    memcpy(t + 4, &s.bias, 4);
  }
}

template <bool kHalf>
__device__ __forceinline__ void load_tail(const uint8_t* t, float& scale, float& bias) {
  if constexpr (kHalf) {
    scale = __half2float(__ushort_as_half(static_cast<unsigned short>(t[0] | (t[1] << 8))));
    bias = __half2float(__ushort_as_half(static_cast<unsigned short>(t[2] | (t[3] << 8))));
  } else {
    memcpy(&scale, t, 4);
    memcpy(&bias, t + 4, 4);
  }
}

// Row r is owned by lanes [L * (r % (32 / L)), ...) of its warp; lane l holds chunks l, l + L, ..., so each
// load instruction of the L lanes covers one contiguous span of the row. Every lane runs the shuffles (rows
// past the end included), so the full-warp mask is exact.
template <typename T, bool kHalf, int K>
__global__ void __launch_bounds__(kThreads) quantize_regs_kernel(const T* __restrict__ x, int64_t rows, int64_t chunks,
                                                                  int64_t row_stride, int lanes,
                                                                  uint8_t* __restrict__ out, int64_t out_width,
                                                                  int32_t* flag, int64_t* first_bad_row) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / lanes) + threadIdx.x / lanes;
  const int lane = threadIdx.x & (lanes - 1);  // lanes is a power of two
  const bool live = row < rows;
  const T* p = x + row * row_stride;
  float v[K][8];
  float mn = INFINITY, mx = -INFINITY, bad = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t c = lane + static_cast<int64_t>(k) * lanes;
    if (live && c < chunks) {
      load8(p + 8 * c, v[k]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) v[k][i] = 0.f;
    }
  }
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (live && lane + static_cast<int64_t>(k) * lanes < chunks) {
#pragma unroll
      for (int i = 0; i < 8; ++i) min_max(v[k][i], mn, mx, bad);
    }
  }
  reduce_min_max(mn, mx, lanes);
  // a zero minimum takes its sign in fbgemm's order; the shuffles need every lane, whichever rows need it
  if (__any_sync(0xffffffffu, live && mn == 0.f)) {
    unsigned long long key = kNoZero;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t c = lane + static_cast<int64_t>(k) * lanes;
      if (live && c < chunks) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (v[k][i] == 0.f) key = min_key(key, zero_key(8 * c + i, 8 * chunks, v[k][i]));
        }
      }
    }
    const float zero = reduce_zero(key, lanes);
    if (mn == 0.f) mn = zero;
  }
  if (!live) return;
  const ScaleBias s = scale_bias<kHalf>(mn, mx);
  report_row<kHalf>(bad, s, row, flag, first_bad_row);
  uint8_t* o = out + row * out_width;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t c = lane + static_cast<int64_t>(k) * lanes;
    if (c < chunks) {
      uint32_t word = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) word |= code(v[k][i], s.bias, s.inv) << (4 * i);
      reinterpret_cast<uint32_t*>(o)[c] = word;
    }
  }
  if (lane == 0) store_tail<kHalf>(o + 4 * chunks, s);
}

// A warp per row, the row read twice (min/max, then encode; the second read mostly hits L1/L2).
// kVec: d % 8 == 0 and 16-byte aligned rows, so each lane reads 8 columns at once and writes 4 code bytes.
template <typename T, bool kHalf, bool kVec>
__global__ void __launch_bounds__(kThreads) quantize_loop_kernel(const T* __restrict__ x, int64_t rows, int64_t d,
                                                                  int64_t row_stride, uint8_t* __restrict__ out,
                                                                  int64_t out_width, int32_t* flag,
                                                                  int64_t* first_bad_row) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together: a warp is one row
  const T* p = x + row * row_stride;
  float mn = INFINITY, mx = -INFINITY, bad = 0.f;
  if constexpr (kVec) {
    for (int64_t g = lane; g < d / 8; g += 32) {
      float v[8];
      load8(p + 8 * g, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) min_max(v[i], mn, mx, bad);
    }
  } else {
    for (int64_t j = lane; j < d; j += 32) min_max(to_float(p[j]), mn, mx, bad);
  }
  reduce_min_max(mn, mx, 32);
  if (mn == 0.f) {  // the same for the whole warp: a warp is one row
    unsigned long long key = kNoZero;
    for (int64_t j = lane; j < d; j += 32) {
      const float v = to_float(p[j]);
      if (v == 0.f) key = min_key(key, zero_key(j, d / 8 * 8, v));
    }
    mn = reduce_zero(key, 32);
  }
  if (d == 0) mn = mx = 0.f;
  const ScaleBias s = scale_bias<kHalf>(mn, mx);
  report_row<kHalf>(bad, s, row, flag, first_bad_row);
  uint8_t* o = out + row * out_width;
  if constexpr (kVec) {
    for (int64_t g = lane; g < d / 8; g += 32) {
      float v[8];
      load8(p + 8 * g, v);
      uint32_t word = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) word |= code(v[i], s.bias, s.inv) << (4 * i);
      reinterpret_cast<uint32_t*>(o)[g] = word;
    }
  } else {
    for (int64_t j = lane; j < d / 2; j += 32) {
      o[j] = static_cast<uint8_t>(code(to_float(p[2 * j]), s.bias, s.inv) |
                                  (code(to_float(p[2 * j + 1]), s.bias, s.inv) << 4));
    }
  }
  if (lane == 0) store_tail<kHalf>(o + d / 2, s);
}

// Same ownership as quantize_regs_kernel, but a chunk is the codes of one 16-byte store: N = kStoreCols<T>
// outputs (4 of float32 from 2 code bytes, 8 of 16-bit types from 4), so each store instruction of the L lanes
// covers one contiguous span (float32 chunks of 8 outputs made every store instruction write every other
// 16-byte slot). A lane issues its K code loads and the tail's before the first store.
template <typename T, bool kHalf, int K>
__global__ void __launch_bounds__(kThreads) dequantize_regs_kernel(const uint8_t* __restrict__ packed, int64_t rows,
                                                                    int64_t chunks, int64_t row_stride, int lanes,
                                                                    T* __restrict__ out) {
  constexpr int N = kStoreCols<T>;
  using code_t = std::conditional_t<N == 4, unsigned short, unsigned int>;  // N / 2 code bytes
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / lanes) + threadIdx.x / lanes;
  const int lane = threadIdx.x & (lanes - 1);  // lanes is a power of two
  if (row >= rows) return;
  const uint8_t* p = packed + row * row_stride;
  code_t c[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t g = lane + static_cast<int64_t>(k) * lanes;
    c[k] = g < chunks ? __ldg(reinterpret_cast<const code_t*>(p) + g) : code_t(0);
  }
  float scale, bias;
  load_tail<kHalf>(p + N / 2 * chunks, scale, bias);
  T* o = out + row * N * chunks;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t g = lane + static_cast<int64_t>(k) * lanes;
    if (g < chunks) {
      float v[N];
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = dequant((c[k] >> (4 * i)) & 0xF, scale, bias);
      store16(o + N * g, v);
    }
  }
}

template <typename T, bool kHalf>
__global__ void __launch_bounds__(kThreads) dequantize_loop_kernel(const uint8_t* __restrict__ packed, int64_t rows,
                                                                    int64_t code_bytes, int64_t row_stride,
                                                                    T* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const uint8_t* p = packed + row * row_stride;
  float scale, bias;
  load_tail<kHalf>(p + code_bytes, scale, bias);
  T* o = out + row * 2 * code_bytes;
  for (int64_t j = lane; j < code_bytes; j += 32) {
    const uint32_t c = p[j];
    o[2 * j] = from_acc<T>(dequant(c & 0xF, scale, bias));
    o[2 * j + 1] = from_acc<T>(dequant(c >> 4, scale, bias));
  }
}

struct Shape {
  int k;      // chunks per lane held in registers; 0: the loop kernel
  int lanes;  // lanes per row
};

// The most chunks per lane of `cols` columns each: rows of up to kMaxRegCols columns in one warp's registers.
constexpr int max_chunks_per_lane(int cols) { return kMaxRegCols / (32 * cols); }

// K: the fewest chunks per lane (of `cols` columns of `elem_size` bytes each) that move >= 32 bytes of the wide
// side and fit the row in one warp.
Shape shape_for(int64_t chunks, int cols, int64_t elem_size) {
  int k = static_cast<int>(std::max<int64_t>(1, 32 / (cols * elem_size)));
  while (int64_t(k) * 32 < chunks) k *= 2;
  if (k > max_chunks_per_lane(cols)) return {0, 32};
  int lanes = 1;
  while (int64_t(lanes) * k < chunks) lanes *= 2;
  return {k, lanes};
}

unsigned blocks_for(int64_t rows, int lanes) { return static_cast<unsigned>(ceil_div(rows * lanes, kThreads)); }

// Calls f(std::integral_constant<int, k>) for k a power of two <= kMaxK.
template <int kMaxK, typename F>
void with_chunks_per_lane(int k, F&& f) {
  if constexpr (kMaxK > 1) {
    if (k < kMaxK) return with_chunks_per_lane<kMaxK / 2>(k, f);
  }
  f(std::integral_constant<int, kMaxK>{});
}

template <typename F>
void with_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Calls f(T{}) for the three code dtypes (float64 has no int4 kernel).
template <typename F>
cudaError_t with_code_dtype(DType dtype, F&& f) {
  if (dtype == DType::kDouble) return cudaErrorInvalidValue;
  return with_dtype(dtype, [&](auto tag) {
    if constexpr (!std::is_same_v<decltype(tag), double>) f(tag);
  });
}

bool aligned(const void* p, int64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

cudaError_t launch_int4_quantize(const void* x, DType dtype, int64_t rows, int64_t d, int64_t row_stride,
                                 bool half_scale_bias, uint8_t* out, int64_t out_width, int32_t* flag,
                                 int64_t* first_bad_row, cudaStream_t stream) {
  return with_code_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x);
    const bool vec = d % 8 == 0 && (row_stride * int64_t(sizeof(T))) % 16 == 0 && aligned(x, 16);
    const Shape shape = vec && d > 0 ? shape_for(d / 8, 8, sizeof(T)) : Shape{0, 32};
    with_bool(half_scale_bias, [&](auto half) {
      constexpr bool kHalf = decltype(half)::value;
      if (shape.k > 0) {
        with_chunks_per_lane<max_chunks_per_lane(8)>(shape.k, [&](auto k) {
          quantize_regs_kernel<T, kHalf, decltype(k)::value><<<blocks_for(rows, shape.lanes), kThreads, 0, stream>>>(
              xp, rows, d / 8, row_stride, shape.lanes, out, out_width, flag, first_bad_row);
        });
      } else {
        with_bool(vec, [&](auto v) {
          quantize_loop_kernel<T, kHalf, decltype(v)::value><<<blocks_for(rows, 32), kThreads, 0, stream>>>(
              xp, rows, d, row_stride, out, out_width, flag, first_bad_row);
        });
      }
    });
  });
}

cudaError_t launch_int4_dequantize(const uint8_t* packed, int64_t rows, int64_t width, int64_t row_stride,
                                   bool half_scale_bias, void* out, DType dtype, cudaStream_t stream) {
  const int64_t code_bytes = width - (half_scale_bias ? 4 : 8);
  return with_code_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* op = static_cast<T*>(out);
    constexpr int N = kStoreCols<T>;
    // rows of whole 4-byte code words (the quantizer's register rows), split into chunks of N / 2 bytes
    const bool vec = code_bytes % 4 == 0 && row_stride % 4 == 0 && aligned(packed, 4) && aligned(out, 16);
    const Shape shape = vec && code_bytes > 0 ? shape_for(code_bytes / (N / 2), N, sizeof(T)) : Shape{0, 32};
    with_bool(half_scale_bias, [&](auto half) {
      constexpr bool kHalf = decltype(half)::value;
      if (shape.k > 0) {
        with_chunks_per_lane<max_chunks_per_lane(N)>(shape.k, [&](auto k) {
          dequantize_regs_kernel<T, kHalf, decltype(k)::value><<<blocks_for(rows, shape.lanes), kThreads, 0, stream>>>(
              packed, rows, code_bytes / (N / 2), row_stride, shape.lanes, op);
        });
      } else {
        dequantize_loop_kernel<T, kHalf><<<blocks_for(rows, 32), kThreads, 0, stream>>>(packed, rows, code_bytes,
                                                                                        row_stride, op);
      }
    });
  });
}

}  // namespace dv365::cuda
