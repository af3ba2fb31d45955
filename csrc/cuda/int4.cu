// CUDA kernels of the int4 rowwise codes (semantics and byte layout: dv365_ops/reference.py int4_quantize).
// One warp per row: the warp reduces the row's min/max with shuffles, then each lane packs column pairs.
// Arithmetic uses explicit round-to-nearest intrinsics so no multiply-add is fused, and the scale is a true
// division by 15 (as on the CPU, in Triton and in fbgemm): the bytes do not depend on the device.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cuda_fp16.h>

#include "cuda/common.cuh"

namespace dv365::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

// torch.amin/amax propagate NaN
__device__ __forceinline__ float nan_min(float a, float b) { return (a != a || b != b) ? __int_as_float(0x7fc00000) : fminf(a, b); }
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b); }

// Eight consecutive elements as floats, with 16-byte loads (the caller checks the alignment).
template <typename scalar_t>
__device__ __forceinline__ void load8(const scalar_t* p, float (&v)[8]) {
  if constexpr (sizeof(scalar_t) == 4) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const scalar_t* h = reinterpret_cast<const scalar_t*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = static_cast<float>(h[i]);
  }
}

__device__ __forceinline__ uint32_t code(float v, float bias, float inv) {
  // clamp(0, 15) of NaN stays NaN in torch and casts to 0 as uint8; fminf/fmaxf give 0 too
  return static_cast<uint32_t>(fminf(fmaxf(rintf(__fmul_rn(__fsub_rn(v, bias), inv)), 0.f), 15.f));
}

// kVec: D % 8 == 0 and 16-byte aligned rows, so each lane reads 8 columns at once and writes 4 code bytes.
template <typename scalar_t, bool kHalf, bool kVec>
__global__ void quantize_kernel(const scalar_t* __restrict__ x, int64_t rows, int64_t d, int64_t row_stride,
                                uint8_t* __restrict__ out, int64_t out_width, int32_t* flag) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const scalar_t* p = x + row * row_stride;
  float mn = INFINITY, mx = -INFINITY;
  if constexpr (kVec) {
    for (int64_t g = lane; g < d / 8; g += 32) {
      float v[8];
      load8(p + 8 * g, v);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        mn = nan_min(mn, v[i]);
        mx = nan_max(mx, v[i]);
      }
    }
  } else {
    for (int64_t j = lane; j < d; j += 32) {
      const float v = static_cast<float>(p[j]);
      mn = nan_min(mn, v);
      mx = nan_max(mx, v);
    }
  }
  for (int o = 16; o > 0; o /= 2) {
    mn = nan_min(mn, __shfl_xor_sync(0xffffffffu, mn, o));
    mx = nan_max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  }
  if (d == 0) mn = mx = 0.f;
  if (lane == 0 && !(isfinite(mn) && isfinite(mx))) set_error(flag, kNotFinite);
  float scale, bias, inv;
  if constexpr (kHalf) {
    bias = __half2float(__float2half_rn(mn));
    const float rng = __fsub_rn(mx, bias);
    scale = __half2float(__float2half_rn(rng == 0.f ? 1.f : __fdiv_rn(rng, 15.f)));
    inv = __fdiv_rn(1.f, scale);
    if (scale == 0.f || isinf(inv)) {
      scale = 1.f;
      inv = 1.f;
    }
  } else {
    bias = mn;
    scale = __fdiv_rn(__fsub_rn(mx, mn), 15.f);
    inv = scale > 0.f ? __fdiv_rn(1.f, scale) : 0.f;
  }
  uint8_t* o = out + row * out_width;
  if constexpr (kVec) {
    for (int64_t g = lane; g < d / 8; g += 32) {
      float v[8];
      load8(p + 8 * g, v);  // the row was just read: these hit the cache
      uint32_t word = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) word |= code(v[i], bias, inv) << (4 * i);
      reinterpret_cast<uint32_t*>(o)[g] = word;
    }
  } else {
    for (int64_t j = lane; j < d / 2; j += 32) {
      o[j] = static_cast<uint8_t>(code(static_cast<float>(p[2 * j]), bias, inv) |
                                  (code(static_cast<float>(p[2 * j + 1]), bias, inv) << 4));
    }
  }
  if (lane == 0) {
    uint8_t* t = o + d / 2;
    if constexpr (kHalf) {
      const __half hs = __float2half_rn(scale), hb = __float2half_rn(bias);
      memcpy(t, &hs, 2);
      memcpy(t + 2, &hb, 2);
    } else {
      memcpy(t, &scale, 4);
      memcpy(t + 4, &bias, 4);
    }
  }
}

template <typename out_t, bool kHalf, bool kVec>
__global__ void dequantize_kernel(const uint8_t* __restrict__ packed, int64_t rows, int64_t width, int64_t row_stride,
                                  out_t* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  constexpr int kTail = kHalf ? 4 : 8;
  const int64_t code_bytes = width - kTail;
  const uint8_t* p = packed + row * row_stride;
  float scale, bias;
  if constexpr (kHalf) {
    __half hs, hb;
    memcpy(&hs, p + code_bytes, 2);
    memcpy(&hb, p + code_bytes + 2, 2);
    scale = __half2float(hs);
    bias = __half2float(hb);
  } else {
    memcpy(&scale, p + code_bytes, 4);
    memcpy(&bias, p + code_bytes + 4, 4);
  }
  out_t* o = out + row * 2 * code_bytes;
  if constexpr (kVec) {
    // 4 code bytes -> 8 outputs per lane, 16-byte stores for float32
    for (int64_t g = lane; g < code_bytes / 4; g += 32) {
      const uint32_t c = reinterpret_cast<const uint32_t*>(p)[g];
      alignas(16) out_t v[8];
#pragma unroll
      for (int i = 0; i < 8; ++i)
        v[i] = static_cast<out_t>(__fadd_rn(__fmul_rn(static_cast<float>((c >> (4 * i)) & 0xF), scale), bias));
      if constexpr (sizeof(out_t) == 4) {
        reinterpret_cast<float4*>(o + 8 * g)[0] = make_float4(v[0], v[1], v[2], v[3]);
        reinterpret_cast<float4*>(o + 8 * g)[1] = make_float4(v[4], v[5], v[6], v[7]);
      } else {
        *reinterpret_cast<uint4*>(o + 8 * g) = *reinterpret_cast<const uint4*>(v);
      }
    }
  } else {
    for (int64_t j = lane; j < code_bytes; j += 32) {
      const uint32_t c = p[j];
      o[2 * j] = static_cast<out_t>(__fadd_rn(__fmul_rn(static_cast<float>(c & 0xF), scale), bias));
      o[2 * j + 1] = static_cast<out_t>(__fadd_rn(__fmul_rn(static_cast<float>(c >> 4), scale), bias));
    }
  }
}

unsigned blocks_for(int64_t rows) { return static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock)); }

at::Tensor int4_quantize_cuda(const at::Tensor& x, bool half_scale_bias) {
  constexpr const char* op = "int4_quantize";
  auto rerun = [&] { rerun_on_cpu<at::Tensor(const at::Tensor&, bool)>("dv365::int4_quantize", x.cpu(), half_scale_bias); };
  check_like_cpu([&] {
    DV365_CHECK(x.dim() == 2, op, "x must be 2-D [R, D], got shape ", x.sizes());
    DV365_CHECK(x.size(1) % 2 == 0, op, "x must have an even number of columns D, got ", x.size(1));
    DV365_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, op,
                "x must be float32, bfloat16 or float16, got ", x.scalar_type());
  }, rerun);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), d = x.size(1);
  const int64_t width = d / 2 + (half_scale_bias ? 4 : 8);
  auto out = at::empty({rows, width}, x.options().dtype(at::kByte));
  if (rows == 0) return out;
  const at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
  auto flag = new_error_flag(x);
  const bool vec = d % 8 == 0 && (xc.stride(0) * xc.element_size()) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(xc.data_ptr()) % 16 == 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "int4_quantize_cuda", [&] {
    auto launch = [&](auto kernel) {
      kernel<<<blocks_for(rows), 32 * kWarpsPerBlock, 0, current_stream()>>>(
          xc.data_ptr<scalar_t>(), rows, d, xc.stride(0), out.data_ptr<uint8_t>(), width, flag.data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (half_scale_bias) {
      vec ? launch(quantize_kernel<scalar_t, true, true>) : launch(quantize_kernel<scalar_t, true, false>);
    } else {
      vec ? launch(quantize_kernel<scalar_t, false, true>) : launch(quantize_kernel<scalar_t, false, false>);
    }
  });
  check_error_flag(flag, op, rerun);
  return out;
}

at::Tensor int4_dequantize_cuda(const at::Tensor& packed, bool half_scale_bias, std::optional<at::ScalarType> dtype) {
  constexpr const char* op = "int4_dequantize";
  const int64_t tail = half_scale_bias ? 4 : 8;
  const auto out_dtype = dtype.value_or(at::kFloat);
  check_like_cpu([&] {
    DV365_CHECK(packed.dim() == 2, op, "packed must be 2-D [R, D/2 + ", tail, "], got shape ", packed.sizes());
    DV365_CHECK(packed.scalar_type() == at::kByte, op, "packed must be uint8, got ", packed.scalar_type());
    DV365_CHECK(packed.size(1) >= tail, op, "packed must have D/2 code bytes plus ", tail, " bytes of scale and bias");
    DV365_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf, op,
                "dtype must be float32, bfloat16 or float16, got ", out_dtype);
  }, [&] {
    rerun_on_cpu<at::Tensor(const at::Tensor&, bool, std::optional<at::ScalarType>)>("dv365::int4_dequantize",
                                                                                     packed.cpu(), half_scale_bias, dtype);
  });
  const c10::cuda::CUDAGuard guard(packed.device());
  const int64_t rows = packed.size(0), width = packed.size(1);
  auto out = at::empty({rows, 2 * (width - tail)}, packed.options().dtype(out_dtype));
  if (rows == 0) return out;
  const at::Tensor pc = packed.stride(1) == 1 ? packed : packed.contiguous();
  const int64_t code_bytes = width - tail;
  const bool vec = code_bytes % 4 == 0 && pc.stride(0) % 4 == 0 && reinterpret_cast<uintptr_t>(pc.data_ptr()) % 4 == 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "int4_dequantize_cuda", [&] {
    auto launch = [&](auto kernel) {
      kernel<<<blocks_for(rows), 32 * kWarpsPerBlock, 0, current_stream()>>>(pc.data_ptr<uint8_t>(), rows, width,
                                                                            pc.stride(0), out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (half_scale_bias) {
      vec ? launch(dequantize_kernel<scalar_t, true, true>) : launch(dequantize_kernel<scalar_t, true, false>);
    } else {
      vec ? launch(dequantize_kernel<scalar_t, false, true>) : launch(dequantize_kernel<scalar_t, false, false>);
    }
  });
  return out;
}

}  // namespace
}  // namespace dv365::cuda

TORCH_LIBRARY_IMPL(dv365, CUDA, m) {
  m.impl("int4_quantize", &dv365::cuda::int4_quantize_cuda);
  m.impl("int4_dequantize", &dv365::cuda::int4_dequantize_cuda);
}
