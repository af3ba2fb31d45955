// Device-side helpers shared by the CUDA kernels (csrc/cuda/*.cu). Nothing here includes ATen: the .cu files
// hold only kernels and their launchers, which take raw pointers and return a cudaError_t. All argument
// checking, allocation and error raising lives in the host files (csrc/cuda/*_ops.cpp, compiled by the C++
// compiler), so no C++ exception is ever thrown from, or unwound through, an nvcc-compiled frame.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/launch.h"

namespace dv365::cuda {

inline __device__ void set_error(int32_t* flag, int32_t bit) { atomicOr(flag, bit); }

// Notes index i in an error record's slot (launch.h), which keeps the smallest index noted; null: no slot.
inline __device__ void note_first(int64_t* slot, int64_t i) {
  if (slot != nullptr) {
    atomicMax(reinterpret_cast<unsigned long long*>(slot), static_cast<unsigned long long>(kNoneNoted - i));
  }
}

// set_error and note_first together.
__device__ __forceinline__ void report_bad(int32_t* flag, int32_t bit, int64_t* slot, int64_t i) {
  set_error(flag, bit);
  note_first(slot, i);
}

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

// Conversion to and from the accumulator type (float for every 16/32-bit dtype, double for double).
template <typename acc_t, typename T>
__device__ __forceinline__ acc_t to_acc(T v) {
  return static_cast<acc_t>(to_float(v));
}
template <>
__device__ __forceinline__ double to_acc<double, double>(double v) {
  return v;
}
template <typename T, typename acc_t>
__device__ __forceinline__ T from_acc(acc_t v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// dst[0..V) += a[0..V) atomically, with float4 atomics where sm_90 has them (one RED per 16 bytes, not four).
template <typename acc_t, int V>
__device__ __forceinline__ void atomic_add_n(acc_t* dst, const acc_t (&a)[V]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kFloat4 = std::is_same_v<acc_t, float> && V % 4 == 0;
#else
  constexpr bool kFloat4 = false;
#endif
  if constexpr (kFloat4) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      atomicAdd(reinterpret_cast<float4*>(dst + i), make_float4(a[i], a[i + 1], a[i + 2], a[i + 3]));
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) atomicAdd(dst + i, a[i]);
  }
}

// Calls f(T{}) with the CUDA type of `dtype`.
template <typename F>
cudaError_t with_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat: f(float{}); break;
    case DType::kDouble: f(double{}); break;
    case DType::kHalf: f(__half{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace dv365::cuda
