// Helpers shared by the CUDA kernels: launch checks on the current stream and the device-side error flag
// through which kernels report data-dependent bad input (ids out of range, offsets not monotone, ...).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>
#include <string>
#include <utility>

#include "dv365.h"

namespace dv365::cuda {

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// Error bits a kernel may set; the op turns them into `dv365::<op>: ...` messages after the launch.
enum ErrorBit : int32_t {
  kIdOutOfRange = 1,
  kOffsetsBad = 2,
  kCatOutOfRange = 4,
  kTableOutOfRange = 8,
  kWeightsBad = 16,
  kNotFinite = 32,
  kTsOrder = 64,
  kTsOverflow = 128,
};

inline __device__ void set_error(int32_t* flag, int32_t bit) { atomicOr(flag, bit); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A zeroed int32 flag on the op's device (a memset on the current stream; graph-capture safe).
inline at::Tensor new_error_flag(const at::Tensor& like) {
  return at::zeros({1}, like.options().dtype(at::kInt));
}

// Runs the op's CPU kernel on CPU copies of the inputs. The CPU kernels hold the one definition of every
// input check and its message, so on bad input the CUDA op re-runs them to raise exactly the CPU error.
template <typename Sig, typename... Args>
void rerun_on_cpu(const char* qualname, Args&&... args) {
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow(qualname, "").typed<Sig>();
  op.redispatch(c10::DispatchKeySet(c10::DispatchKey::CPU), std::forward<Args>(args)...);
}

inline std::vector<at::Tensor> to_cpu(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.cpu());
  return out;
}

inline std::optional<at::Tensor> to_cpu(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? std::optional<at::Tensor>(t->cpu()) : std::nullopt;
}

// Runs the metadata checks; when one fails, the CPU kernel's message wins (rerun), else the check's own.
template <typename Checks, typename Rerun>
void check_like_cpu(Checks&& checks, Rerun&& rerun) {
  try {
    checks();
  } catch (const c10::Error&) {
    rerun();
    throw;
  }
}

// Reads the flag; on bad input re-runs the CPU kernel for its message (and throws a summary if that passes).
// While the stream is being captured into a CUDA graph the check is skipped: a graph cannot synchronize, so
// inside a graph bad input is never read out of bounds (kernels skip the offending element) but is reported
// nowhere. Outside a graph this costs one device synchronization.
template <typename Rerun>
void check_error_flag(const at::Tensor& flag, const char* op, Rerun&& rerun) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
  if (status != cudaStreamCaptureStatusNone) return;
  const int32_t bits = flag.item<int32_t>();
  if (bits == 0) return;
  rerun();
  std::string what;
  if (bits & kIdOutOfRange) what += "ids must lie in [0, num_rows) of their table; ";
  if (bits & kOffsetsBad) what += "offsets must start at 0, be non-decreasing and end at the number of ids; ";
  if (bits & kCatOutOfRange) what += "cats values must lie in [0, 63]; ";
  if (bits & kTableOutOfRange) what += "prog_i TABLE column must index the tables list; ";
  if (bits & kWeightsBad) what += "weights must be finite and non-negative; ";
  if (bits & kNotFinite) what += "x must be finite; ";
  if (bits & kTsOrder) what += "ts must be ascending within each user; ";
  if (bits & kTsOverflow) what += "request_ts - ts overflows int64; ";
  TORCH_CHECK(false, "dv365::", op, ": ", what.substr(0, what.size() - 2), " (checked on the device)");
}

inline bool capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

// Checks offsets [M+1] against n ids on the device: offsets[0] == 0, non-decreasing, offsets[M] == n.
__global__ void check_offsets_kernel(const int64_t* __restrict__ offsets, int64_t m, int64_t n, int32_t* flag);

inline void check_offsets_async(const at::Tensor& offsets, int64_t n, const at::Tensor& flag) {
  const int64_t m = offsets.numel() - 1;
  const int threads = 256;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(ceil_div(m + 1, threads), 4096));
  check_offsets_kernel<<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      offsets.data_ptr<int64_t>(), m, n, flag.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

inline void check_device(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref,
                         const char* ref_name) {
  DV365_CHECK(t.device() == ref.device(), op, name, " must be on the same device as ", ref_name, " (", ref.device(),
              "), got ", t.device());
}

}  // namespace dv365::cuda
