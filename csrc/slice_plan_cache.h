// Plans keyed per program (slice_plan.h builds them): the CPU kernels, the CUDA host and dv365::plan_slices
// look a program's plan up here instead of planning it on every call.
//
// A program is the data of its two tensors (storage, view, dtype) at their versions: the cache holds the tensors
// (so their storage cannot be reused by another program while the entry lives) and torch's version counters (an
// in-place write through torch bumps them, so an edited program is planned again; a write that bypasses them,
// through .data, DLPack or another library, is not seen). Inference tensors have no version counter: their plan is built
// on every call and not kept. The cache keeps the most recently used kMaxPrograms programs.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "slice_plan.h"

namespace dv365::plan {

constexpr size_t kMaxPrograms = 64;

struct CachedPlan {
  SlicePlan plan;
  at::Tensor plan_i, plan_f;  // the tensor form, on the CPU
  // What a backend derives from the plan and keeps with it (the CUDA host: the plan uploaded to a device, per
  // device and block size), under mu.
  std::mutex mu;
  std::vector<std::pair<std::pair<int64_t, int64_t>, at::Tensor>> derived;

  at::Tensor find_derived(int64_t a, int64_t b) {
    const std::lock_guard<std::mutex> lock(mu);
    for (const auto& [key, t] : derived)
      if (key.first == a && key.second == b) return t;
    return {};
  }
  void add_derived(int64_t a, int64_t b, at::Tensor t) {
    const std::lock_guard<std::mutex> lock(mu);
    for (const auto& [key, old] : derived)
      if (key.first == a && key.second == b) return;
    derived.emplace_back(std::make_pair(a, b), std::move(t));
  }
};

// The plan of the program (prog_i, prog_f) for a timeline with T tables, C categorical and F float rows: the
// cached one, or a new one (the program is read on the host: for CUDA tensors a copy and a synchronization).
// Checks prog_i / prog_f's dtypes and shapes and the program's entries, raising "dv365::<op>: ..." with the
// slicing ops' messages.
std::shared_ptr<CachedPlan> plan_of(const char* op, const at::Tensor& prog_i, const at::Tensor& prog_f, int64_t T,
                                    int64_t C, int64_t F);

// The cached plan of the program, or null (never reads the program: safe while a CUDA graph is captured).
std::shared_ptr<CachedPlan> find_plan(const at::Tensor& prog_i, const at::Tensor& prog_f, int64_t T, int64_t C,
                                      int64_t F);

}  // namespace dv365::plan
