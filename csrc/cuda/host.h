// Host-side helpers of the CUDA ops (csrc/cuda/*_ops.cpp, compiled by the C++ compiler, never by nvcc):
// device and dtype plumbing, launch checks, and the device error flag through which kernels report
// data-dependent bad input (ids out of range, offsets not monotone, ...).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cuda/launch.h"
#include "deferred_checks.h"
#include "dv365.h"

namespace dv365::cuda {

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// Raises a CUDA launch error (a configuration bug, never bad input) with the op's name.
inline void check_launch(cudaError_t err, const char* op) {
  if (err != cudaSuccess) DV365_RAISE("dv365::", op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

inline DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: DV365_RAISE("dv365: no CUDA kernel for dtype ", t);
  }
}

inline bool capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(current_stream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

inline std::string error_bits_message(int32_t bits);

// The op's error record of 1 + `slots` int64 words (launch.h): in deferred mode (deferred_checks.h) the op's kept
// one, else (or `op` null: never deferred) a fresh zeroed one (a memset on the current stream; graph-capture safe). While a graph is captured a
// kept record is used only if it exists already, so the graph's replays report into it.
inline at::Tensor new_error_words(const at::Tensor& like, int slots, const char* op) {
  if (op != nullptr && deferred::enabled()) {
    at::Tensor kept = deferred::flag(op, like, 1 + slots, &error_bits_message, !capturing());
    if (kept.defined()) return kept;
  }
  return at::zeros({1 + slots}, like.options().dtype(at::kLong));
}

// The int32 error flag of the slicing ops: word 0 of new_error_words (its low 32 bits: every CUDA host is
// little-endian). `op` null: never deferred (an op that synchronises anyway, e.g. for its output's size).
inline at::Tensor new_error_flag(const at::Tensor& like, const char* op = nullptr) {
  return new_error_words(like, 0, op).view(at::kInt).narrow(0, 0, 1);
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

// CPU stand-ins for tables in a re-run: each one row of zeros seen through a zero row stride, with the table's
// shape and dtype. The CPU kernel checks ids against the tables' row counts and never needs their rows to name a
// bad input, so an error message costs no copy of the tables (a W40K step's are 1.2 GB).
inline std::vector<at::Tensor> table_stand_ins(at::TensorList tables) {
  std::vector<at::Tensor> out;
  out.reserve(tables.size());
  for (const auto& t : tables) {
    out.push_back(at::zeros({1, t.size(1)}, t.options().device(at::kCPU)).expand({t.size(0), t.size(1)}));
  }
  return out;
}

inline std::optional<at::Tensor> to_cpu(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? std::optional<at::Tensor>(t->cpu()) : std::nullopt;
}

inline std::string error_bits_message(int32_t bits) {
  std::string what;
  if (bits & kIdOutOfRange) what += "ids must lie in [0, num_rows) of their table; ";
  if (bits & kOffsetsBad) what += "offsets must start at 0, be non-decreasing and end at the number of ids; ";
  if (bits & kCatOutOfRange) what += "cats values must lie in [0, " + std::to_string(prog::kMaxCatValue) + "]; ";
  if (bits & kTableOutOfRange) what += "prog_i TABLE column must index the tables list; ";
  if (bits & kWeightsBad) what += "weights must be finite and non-negative; ";
  if (bits & kNotFinite) what += "x must be finite; ";
  if (bits & kNotEncodable) what += "a row of x is too wide for its scale/bias format; ";
  if (bits & kTsOrder) what += "ts must be ascending within each user; ";
  if (bits & kTsOverflow) what += "request_ts - ts overflows int64; ";
  if (bits & kInternal) what += "internal error: a kernel's launch did not match its plan (please report); ";
  return what.empty() ? what : what.substr(0, what.size() - 2);
}

// Reads the flag; on bad input re-runs the CPU kernel for its message (and raises a summary if that passes).
// Outside a graph this costs one device synchronization. Not read: a kept flag of deferred mode (the next
// deferred::check() reads it), and any flag while the stream is being captured into a CUDA graph, which cannot
// synchronize: inside a graph bad input is never read out of bounds (kernels skip the offending element) and is
// reported only through deferred mode's flags.
template <typename Rerun>
void check_error_flag(const at::Tensor& flag, const char* op, Rerun&& rerun) {
  if (capturing() || deferred::is_flag(flag)) return;
  const int32_t bits = flag.item<int32_t>();
  if (bits == 0) return;
  rerun();
  DV365_RAISE("dv365::", op, ": ", error_bits_message(bits), " (checked on the device)");
}

// An error record (launch.h) on the op's device with `slots` index slots: one memset on the current stream.
class ErrorRecord {
 public:
  ErrorRecord(const at::Tensor& like, int slots, const char* op) : words_(new_error_words(like, slots, op)) {}
  int32_t* flag() { return record_flag(words_.mutable_data_ptr<int64_t>()); }
  int64_t* slot(int k) { return record_slot(words_.mutable_data_ptr<int64_t>(), k); }

  // Reads the record (one device synchronization): false when the kernels found nothing. Nothing is read (false)
  // for a kept record of deferred mode or while a graph is captured, as in check_error_flag.
  bool read() {
    if (capturing() || deferred::is_flag(words_)) return false;
    host_ = words_.cpu();
    return bits() != 0;
  }
  int32_t bits() const { return static_cast<int32_t>(host_.const_data_ptr<int64_t>()[0] & 0xFFFFFFFF); }
  // the smallest index noted in slot k, or -1
  int64_t first(int k) const { return noted_index(host_.const_data_ptr<int64_t>()[1 + k]); }

 private:
  at::Tensor words_, host_;
};

// One int64 element of a device tensor, read on the host (an error path's look at the value it names).
inline int64_t element_i64(const at::Tensor& t, int64_t i) { return t.select(0, i).item<int64_t>(); }
inline double element_f64(const at::Tensor& t, int64_t i) { return t.select(0, i).item<double>(); }

// Raises the summary of what the kernels flagged, when the op's own messages did not explain it.
inline void raise_flagged(const char* op, int32_t bits) {
  DV365_RAISE("dv365::", op, ": ", error_bits_message(bits), " (checked on the device)");
}

inline void check_offsets_async(const at::Tensor& offsets, int64_t n, const at::Tensor& flag, const char* op) {
  check_launch(launch_check_offsets(offsets.data_ptr<int64_t>(), offsets.numel() - 1, n, flag.data_ptr<int32_t>(),
                                    current_stream()),
               op);
}

inline void check_device(const at::Tensor& t, const char* op, const char* name, const at::Tensor& ref,
                         const char* ref_name) {
  DV365_CHECK(t.device() == ref.device(), op, name, " must be on the same device as ", ref_name, " (", ref.device(),
              "), got ", t.device());
}

}  // namespace dv365::cuda
