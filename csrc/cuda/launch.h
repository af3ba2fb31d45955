// The boundary between the host files (csrc/cuda/*_ops.cpp, ATen, C++ compiler) and the kernel files
// (csrc/cuda/*.cu, nvcc, no ATen): plain types and the launchers both sides share. Each launcher enqueues its
// kernels on `stream` and returns the launch status; it never throws.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dv365::cuda {

// The floating dtypes the kernels take (mapped from at::ScalarType in host.h).
enum class DType : int32_t { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// Error bits a kernel may set in the op's int32 device flag; host.h turns them into messages.
enum ErrorBit : int32_t {
  kIdOutOfRange = 1,
  kOffsetsBad = 2,
  kCatOutOfRange = 4,
  kTableOutOfRange = 8,
  kWeightsBad = 16,
  kNotFinite = 32,
  kTsOrder = 64,
  kTsOverflow = 128,
  kInternal = 256,  // a kernel found its launch inconsistent with the data (a bug: please report)
  kNotEncodable = 512,  // int4: a row whose scale or bias overflows its format
};

inline constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Checks offsets [m + 1] against n ids: offsets[0] == 0, non-decreasing, offsets[m] == n (sets kOffsetsBad).
cudaError_t launch_check_offsets(const int64_t* offsets, int64_t m, int64_t n, int32_t* flag, cudaStream_t stream);

}  // namespace dv365::cuda
