// The device plan (plan.cuh): fill_device_plan writes it on the host from the program's plan (slice_plan.h, the
// grouping every backend uses), cutting each table's groups into CTA blocks; items_kernel cuts each user's timeline
// into work items; prepare_items launches it and the keep pass.
#include <algorithm>

#include "cuda/slicing/keep.cuh"
#include "cuda/slicing/plan.cuh"

namespace dv365::cuda::slicing {
namespace {

// First event e in [lo, hi) with request_ts - ts[e] <= x (the timeline is ascending, so these form a suffix).
__device__ int64_t first_within(const Timeline& tl, int64_t lo, int64_t hi, int64_t request_ts, int64_t x) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (delta(request_ts, tl.ts[mid]) <= x) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// One CTA per user: every segment's event range (one thread per segment), cut into items. With
// all_segments, segments no slice covers get items too (the per-event backward writes their zero rows).
__global__ void items_kernel(Timeline tl, Program p, int64_t t_count, int64_t* plan, int64_t* items,
                             int64_t items_cap, int64_t item_events, bool all_segments) {
  PlanView v(plan, p.s, t_count);
  const int64_t b = blockIdx.x;
  const int64_t k = v.hdr[kNumBounds];
  int64_t lo, hi;
  user_range(tl, b, lo, hi);
  if (lo >= hi) return;
  const int64_t request_ts = tl.request_ts[b];
  for (int64_t j = threadIdx.x; j <= k; j += blockDim.x) {
    if (!all_segments && !v.covered[j]) continue;
    const int64_t end = j == 0 ? hi : first_within(tl, lo, hi, request_ts, v.bounds[j - 1]);
    int64_t start = j == k ? lo : first_within(tl, lo, hi, request_ts, v.bounds[j]);
    start = min(start, end);  // unsorted timestamps (reported by the validation kernel) stay in range
    if (start >= end) continue;
    const int64_t count = ceil_div(end - start, item_events);
    const int64_t slot =
        static_cast<int64_t>(atomicAdd(reinterpret_cast<unsigned long long*>(v.hdr + kNumItems),
                                       static_cast<unsigned long long>(count)));
    for (int64_t c = 0; c < count && slot + c < items_cap; ++c) {
      int64_t* it = items + 4 * (slot + c);
      it[0] = b;
      it[1] = start + c * item_events;
      it[2] = min(end, start + (c + 1) * item_events);
      it[3] = j;
    }
  }
}

}  // namespace

void fill_device_plan(const plan::SlicePlan& p, int64_t t_count, int block_groups, int64_t* out) {
  const int64_t S = p.S, bg = block_groups;
  std::fill(out, out + plan_elems(S, t_count), int64_t{0});
  PlanView v(out, S, t_count);
  int64_t blocks = 0;
  for (int64_t t = 0; t < t_count; ++t) {
    v.tbase[t] = p.table_groups[t];
    v.tcount[t] = p.table_groups[t + 1] - p.table_groups[t];
    v.bbase[t] = blocks;
    for (int64_t first = 0; first < v.tcount[t]; first += bg) {
      v.block_first[blocks] = v.tbase[t] + first;
      v.block_count[blocks] = std::min(bg, v.tcount[t] - first);
      v.block_table[blocks] = t;
      ++blocks;
    }
  }
  v.hdr[kNumGroups] = p.G;
  v.hdr[kNumBlocks] = blocks;
  v.hdr[kNumBounds] = static_cast<int64_t>(p.bounds.size());
  v.hdr[kNumItems] = 0;  // written by each call in its copy (prepare_items)
  v.hdr[kNumWeighted] = p.num_weighted;
  std::copy(p.bounds.begin(), p.bounds.end(), v.bounds);
  std::copy(p.covered.begin(), p.covered.end(), v.covered);
  for (int64_t g = 0; g < p.G; ++g) {
    v.group_leader[g] = p.groups[g].leader;
    v.wslot[g] = p.groups[g].wslot;
  }
  for (int64_t s = 0; s < S; ++s) {
    const plan::Group& q = p.groups[p.slice_group[s]];
    v.slice_block[s] = v.bbase[q.table] + q.rank / bg;
    v.slice_pos[s] = q.rank % bg;
  }
}

cudaError_t prepare_items(const Timeline& tl, const Program& prog, int64_t t_count, Scratch sc, bool all_segments,
                          int32_t* flag, cudaStream_t stream, int64_t& items_cap) {
  items_cap = max_items(prog.s, tl.num_users, tl.n, sc.item_events);
  // the items kernel counts from 0 (a call may prepare items twice: the float64 backward's weight sums, then its own)
  cudaError_t err = cudaMemsetAsync(sc.plan + kNumItems, 0, sizeof(int64_t), stream);
  if (err != cudaSuccess || tl.num_users == 0) return err;
  items_kernel<<<static_cast<unsigned>(tl.num_users), 64, 0, stream>>>(tl, prog, t_count, sc.plan, sc.items,
                                                                        items_cap, sc.item_events, all_segments);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return launch_keep_pass(tl, prog, t_count, sc, items_cap, flag, stream);
}

}  // namespace dv365::cuda::slicing
