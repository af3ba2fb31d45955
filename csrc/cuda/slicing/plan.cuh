// The device plan of sliced_pool (written on the host by fill_device_plan from the program's plan, slice_plan.h;
// read by the items kernel, the keep pass and the pooling kernels): the program's groups, their CTA blocks, the
// distinct window bounds, and the call's work item count.
#pragma once

#include "cuda/slicing/common.cuh"

namespace dv365::cuda::slicing {

// ---- the plan ----
// int64 layout: header[32] | slice_block[S] | slice_pos[S] | leader[S] | grank[S] | vals[2S] | first[2S] |
//               bounds[2S] | covered[2S + 1] | group_leader[S] | block_first[S + T] | block_count[S + T] |
//               block_table[S + T] | tcount[T] | tbase[T] | bbase[T] | wslot[S]   (17 S + 6 T + 33 <= plan_elems)
// Groups are the plan's (numbered by table, then leader): tbase[t] is table t's first group and tcount[t] its group
// count; a table's groups are cut into blocks of at most block_groups. group_leader[g]: the slice whose program row
// is group g's predicate. wslot[g]: group g's row in the keep pass's weights (its rank among the weighted groups),
// -1 for an unweighted group (a kept event weighs 1). The header's kNumItems is the one entry a call writes (the
// items kernel counts its work items there, in the call's copy).
// leader, grank, vals and first are unused (they held the device plan kernel's grouping, which the host's plan
// replaced): they stay in the layout and in PlanView because nvcc allocates the kernels' registers differently
// without them (the keep pass went from 64 registers to 80, the pooling kernels by one or two), and the kernels'
// timings were measured with this allocation.
enum Header : int64_t {
  kNumGroups = 0, kNumBlocks = 1, kNumBounds = 2, kNumItems = 3, kNumWeighted = 4, kHeader = 32
};

struct PlanView {
  int64_t* hdr;
  int64_t *slice_block, *slice_pos, *leader, *grank, *vals, *first, *bounds, *covered, *group_leader;
  int64_t *block_first, *block_count, *block_table, *tcount, *tbase, *bbase, *wslot;
  __host__ __device__ PlanView(int64_t* p, int64_t s, int64_t t) {
    const int64_t s1 = s > 0 ? s : 1;
    hdr = p;
    slice_block = p + kHeader;
    slice_pos = slice_block + s1;
    leader = slice_pos + s1;
    grank = leader + s1;
    vals = grank + s1;
    first = vals + 2 * s1;
    bounds = first + 2 * s1;
    covered = bounds + 2 * s1;
    group_leader = covered + 2 * s1 + 1;
    block_first = group_leader + s1;
    block_count = block_first + s1 + t;
    block_table = block_count + s1 + t;
    tcount = block_table + s1 + t;
    tbase = tcount + t;
    bbase = tbase + t;
    wslot = bbase + t;
  }
};

// Segment j of K bounds: request_ts - ts in (bounds[j - 1], bounds[j]] (j = 0: <= bounds[0]; j = K: > bounds[K-1]).
// Slice s covers it iff its window (lo, hi] contains it; segments 0 and K lie outside every window.
__device__ __forceinline__ bool covers(int64_t lo, int64_t hi, int64_t j, int64_t k, const int64_t* bounds) {
  return j >= 1 && j < k && lo <= bounds[j - 1] && bounds[j] <= hi;
}

// The work items (items_kernel) of this call from its copy of the device plan (sc.plan), then the keep pass when
// sc.keep has buffers. all_segments: segments no slice covers get items too (the per-event backward).
// items_cap: the most items the scratch holds.
cudaError_t prepare_items(const Timeline& tl, const Program& prog, int64_t t_count, Scratch sc, bool all_segments,
                          int32_t* flag, cudaStream_t stream, int64_t& items_cap);

}  // namespace dv365::cuda::slicing
