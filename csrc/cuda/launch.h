// The boundary between the host files (csrc/cuda/*_ops.cpp, ATen, C++ compiler) and the kernel files
// (csrc/cuda/*.cu, nvcc, no ATen): plain types and the launchers both sides share. Each launcher enqueues its
// kernels on `stream` and returns the launch status; it never throws.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <climits>

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

// Where a kernel found bad input, so the host can name it without reading the inputs: an error record is a
// zeroed int64 buffer on the device, word 0 holding the ErrorBit flag in its low 32 bits (every CUDA host is
// little-endian) and each further word a slot that keeps the smallest index noted in it (note_first in
// device.cuh), stored as kNoneNoted - index so that the zeroed word reads as "none" and atomicMax keeps the
// smallest. One memset makes it, one copy of a few bytes reads it all.
inline constexpr int64_t kNoneNoted = INT64_MAX;
inline int32_t* record_flag(int64_t* record) { return reinterpret_cast<int32_t*>(record); }
inline int64_t* record_slot(int64_t* record, int slot) { return record + 1 + slot; }
// The index a slot holds, or -1 when nothing was noted in it.
inline int64_t noted_index(int64_t word) { return word == 0 ? -1 : kNoneNoted - word; }

inline constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Checks offsets [m + 1] against n ids: offsets[0] == 0, non-decreasing, offsets[m] == n (sets kOffsetsBad).
// `first_step` (may be null): a record slot given the first b with offsets[b] > offsets[b + 1].
cudaError_t launch_check_offsets(const int64_t* offsets, int64_t m, int64_t n, int32_t* flag, cudaStream_t stream,
                                 int64_t* first_step = nullptr);

}  // namespace dv365::cuda
