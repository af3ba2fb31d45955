// Launchers of the multi-slicing CUDA kernels (the .cu files of this folder), called from ops.cpp.
#pragma once

#include <algorithm>

#include "cuda/launch.h"
#include "slice_plan.h"

namespace dv365::cuda::slicing {

constexpr int kMaxTables = 32;
constexpr int kMaxBlockGroups = 32;  // groups one CTA pools (a bit each in an event's uint32 mask)
constexpr int kPackedCats = 8;       // categorical fields held in one uint64 per event, a byte each

// The timeline tensors (contiguous, validated on the host for shapes and dtypes).
struct Timeline {
  const int64_t* offsets;
  int64_t num_users, n;
  const int64_t* ts;
  const int64_t* request_ts;
  const void* cats;  // [cat_fields, n], integer of cat_bytes bytes
  int64_t cat_fields;
  int cat_bytes;
  const float* floats;  // [2, n] duration, dwell; null when the timeline has no float fields
};

struct Tables {
  const void* table[kMaxTables];   // [rows, D] with row_stride, unit column stride (forward)
  const int64_t* ids[kMaxTables];  // [n]
  int64_t rows[kMaxTables];        // ids must lie in [0, rows)
  int64_t row_stride[kMaxTables];
  void* out[kMaxTables];  // backward outputs: dense [rows, D] (acc dtype) or per event [n, D] (grad dtype)
  // per-event backward, a table pooled by several CTA blocks: the [n, D] accumulator (acc dtype, zeroed by the
  // kernels) its blocks add into; out itself for float32/float64, a float32 buffer converted into out at the
  // end for the 16-bit dtypes (adding partial sums in bf16 lost up to a few ulps of the partial sums)
  void* rows_acc[kMaxTables];
  int64_t num_tables;
};

struct Program {
  const int64_t* prog_i;  // [S, 10]
  const double* prog_f;   // [S, 7]
  int64_t s;
};

// Scratch the host allocates (int64 elements) for the call's copy of the device plan and its work list.
// A work item is (user, first event, end event, segment): at most item_events events of one user whose
// request_ts - ts lies in one segment between consecutive distinct window bounds of the program.
inline int64_t plan_elems(int64_t s, int64_t t) { return 64 + 17 * std::max<int64_t>(s, 1) + 8 * t; }

// The device plan (plan.cuh's PlanView layout, plan_elems(p.S, t_count) elements written into out) of a program's
// plan (slice_plan.h: its groups, their order and the window bounds) for block_groups groups per CTA block: the
// blocks cut from each table's groups, each slice's block and position in it. The host builds it once per program,
// device and block size and copies it into each call's scratch.
void fill_device_plan(const plan::SlicePlan& p, int64_t t_count, int block_groups, int64_t* out);
inline int64_t max_items(int64_t s, int64_t b, int64_t n, int64_t item_events) {
  return ceil_div(n, item_events) + b * (2 * s + 1) + 1;
}

// The keep pass (keep_kernel, before the pooling kernels): the predicates of every (event, active group) of the
// work items evaluated once, not once per CTA block that pools the event: per block the mask of its groups that
// keep the event ([blocks][n] uint32) and per weighted group its weights ([weighted][n] float, 0 where not kept).
// The buffers are sized by the host's bounds on the device plan (its blocks, groups and weighted groups); with
// mask null, or a device plan beyond the bounds, the pooling kernels evaluate the predicates themselves.
struct Keep {
  uint32_t* mask = nullptr;
  float* w = nullptr;
  int64_t n = 0, blocks = 0, groups = 0, weighted = 0;
  int64_t fields = 0;  // min(categorical fields, kPackedCats): the fields an event packs (the keep pass's tables)
};

struct Scratch {
  Keep keep;
  int64_t* plan;   // plan_elems(s, t) elements: the call's copy of the device plan (fill_device_plan)
  int64_t* items;  // 4 * max_items(s, b, n, item_events) elements
  int64_t item_events;
};

// How the pooling kernels cut the work: groups per CTA block, in [1, kMaxBlockGroups]; the number of blocks the
// plan has; rows a lane has in flight (8 or 16, forward only).
struct Tuning {
  int block_groups = 8;
  int64_t num_blocks = 0;
  int rows_in_flight = 8;
  // the dense backward sorts each batch of events by row before adding into the rows (see backward.cu)
  bool sort_rows = true;
};

// pooled [B, S, D] (dtype) and weight_sum [B, S] float32 from num/wacc accumulators (acc dtype, zeroed).
cudaError_t launch_sliced_pool(const Timeline& tl, const Tables& tabs, const Program& prog, int64_t d, DType dtype,
                               Tuning tune, Scratch scratch, void* num, void* wacc, void* pooled, float* wsum,
                               int32_t* flag, cudaStream_t stream);

// Backward: grad [B, S, D] (dtype, contiguous), weight_sum [B, S] (float32, or float64 when ws_double). rows: tabs.out[t] is [n, D] in dtype
// (uninitialized: every row is written); else tabs.out[t] is a zeroed dense [rows, D] in the acc dtype.
cudaError_t launch_sliced_pool_backward(bool rows, const Timeline& tl, const Tables& tabs, const Program& prog,
                                        int64_t d, DType dtype, Tuning tune, Scratch scratch, const void* grad,
                                        const void* weight_sum, bool ws_double, int32_t* flag, cudaStream_t stream);

// slice_timeline: count pass (lengths [S * B]) then, with starts = exclusive cumsum, the emit pass.
cudaError_t launch_slice_timeline_count(const Timeline& tl, const Tables& tabs, const Program& prog,
                                        int64_t* lengths, int32_t* flag, cudaStream_t stream);
cudaError_t launch_slice_timeline_emit(const Timeline& tl, const Tables& tabs, const Program& prog,
                                       const int64_t* starts, int64_t total, int64_t* values, float* weights,
                                       int32_t* flag, cudaStream_t stream);

// The event data checks: cats in [0, 63], ts ascending per user, request_ts - ts without overflow.
cudaError_t launch_validate_timeline(const Timeline& tl, int32_t* flag, cudaStream_t stream);

// Every table's ids in [0, tabs.rows[t]) (the pooling kernels read only the events some slice keeps).
cudaError_t launch_validate_ids(const Tables& tabs, int64_t n, int32_t* flag, cudaStream_t stream);

}  // namespace dv365::cuda::slicing
