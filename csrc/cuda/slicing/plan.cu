// The device plan (plan.cuh): plan_kernel groups the program's slices and cuts the groups into CTA blocks,
// items_kernel cuts each user's timeline into work items; build_plan launches them and the keep pass.
#include <algorithm>

#include "cuda/slicing/keep.cuh"
#include "cuda/slicing/plan.cuh"

namespace dv365::cuda::slicing {
namespace {

constexpr int kPlanThreads = 256;

// One CTA. Groups slices, numbers groups per table (in slice order), cuts them into blocks, and sorts the
// distinct window bounds.
__global__ void __launch_bounds__(kPlanThreads) plan_kernel(Program p, int64_t t_count, int64_t block_groups,
                                                            int64_t* plan, int32_t* flag) {
  const int64_t S = p.s;
  PlanView v(plan, S, t_count);
  const int tid = threadIdx.x;
  // leaders: the first slice of each group; -1 for slices naming no table
  for (int64_t s = tid; s < S; s += blockDim.x) {
    const int64_t t = p.prog_i[s * prog::kNumInt + prog::kTable];
    int64_t lead = -1;
    if (t < 0 || t >= t_count) {
      set_error(flag, kTableOutOfRange);
    } else {
      lead = s;
      for (int64_t o = 0; o < s; ++o) {
        const int64_t to = p.prog_i[o * prog::kNumInt + prog::kTable];
        if (to == t && same_group(p, o, s)) {
          lead = o;
          break;
        }
      }
    }
    v.leader[s] = lead;
    const int64_t lo = p.prog_i[s * prog::kNumInt + prog::kWinLo];
    const int64_t hi = p.prog_i[s * prog::kNumInt + prog::kWinHi];
    v.vals[2 * s] = lo;
    v.vals[2 * s + 1] = hi;
  }
  __syncthreads();
  // distinct bounds, ascending: first[i] marks the first occurrence of each value, whose rank among the
  // marked values is its position
  const int64_t m = 2 * S;
  for (int64_t i = tid; i < m; i += blockDim.x) {
    const int64_t x = v.vals[i];
    bool first = true;
    for (int64_t j = 0; j < i && first; ++j) first = v.vals[j] != x;
    v.first[i] = first;
  }
  __syncthreads();
  __shared__ unsigned long long num_bounds;
  if (tid == 0) num_bounds = 0;
  __syncthreads();
  for (int64_t i = tid; i < m; i += blockDim.x) {
    if (!v.first[i]) continue;
    const int64_t x = v.vals[i];
    int64_t rank = 0;
    for (int64_t j = 0; j < m; ++j) rank += v.first[j] && v.vals[j] < x;
    v.bounds[rank] = x;
    atomicAdd(&num_bounds, 1ull);
  }
  if (tid == 0) {
    // group ranks per table in slice order, then blocks of at most block_groups groups per table
    for (int64_t t = 0; t < t_count; ++t) v.tcount[t] = 0;
    for (int64_t s = 0; s < S; ++s) {
      if (v.leader[s] == s) {
        const int64_t t = p.prog_i[s * prog::kNumInt + prog::kTable];
        v.grank[s] = v.tcount[t]++;
      }
    }
    int64_t groups = 0, blocks = 0;
    for (int64_t t = 0; t < t_count; ++t) {
      v.tbase[t] = groups;
      v.bbase[t] = blocks;
      for (int64_t first = 0; first < v.tcount[t]; first += block_groups) {
        v.block_first[blocks] = groups + first;
        v.block_count[blocks] = min(block_groups, v.tcount[t] - first);
        v.block_table[blocks] = t;
        ++blocks;
      }
      groups += v.tcount[t];
    }
    v.hdr[kNumGroups] = groups;
    v.hdr[kNumBlocks] = blocks;
    v.hdr[kNumItems] = 0;
  }
  __syncthreads();
  const int64_t k = static_cast<int64_t>(num_bounds);
  if (tid == 0) v.hdr[kNumBounds] = k;
  // the segments some slice's window covers
  for (int64_t j = tid; j <= k; j += blockDim.x) {
    bool any = false;
    for (int64_t s = 0; s < S && !any; ++s) {
      if (v.leader[s] < 0) continue;
      const int64_t* r = p.prog_i + s * prog::kNumInt;
      any = covers(r[prog::kWinLo], r[prog::kWinHi], j, k, v.bounds);
    }
    v.covered[j] = any;
  }
  for (int64_t s = tid; s < S; s += blockDim.x) {
    const int64_t lead = v.leader[s];
    if (lead < 0) {
      v.slice_block[s] = -1;
      v.slice_pos[s] = 0;
      continue;
    }
    const int64_t t = p.prog_i[lead * prog::kNumInt + prog::kTable];
    const int64_t r = v.grank[lead];
    v.slice_block[s] = v.bbase[t] + r / block_groups;
    v.slice_pos[s] = r % block_groups;
    if (lead == s) v.group_leader[v.tbase[t] + r] = s;
  }
  __syncthreads();
  if (tid == 0) {
    int64_t weighted = 0;
    for (int64_t g = 0; g < v.hdr[kNumGroups]; ++g) {
      const bool w = (p.prog_i[v.group_leader[g] * prog::kNumInt + prog::kFlags] & prog::kWeighted) != 0;
      v.wslot[g] = w ? weighted++ : -1;
    }
    v.hdr[kNumWeighted] = weighted;
  }
}

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

cudaError_t build_plan(const Timeline& tl, const Program& prog, int64_t t_count, int block_groups, Scratch sc,
                       bool all_segments, int32_t* flag, cudaStream_t stream, int64_t& items_cap) {
  items_cap = max_items(prog.s, tl.num_users, tl.n, sc.item_events);
  cudaError_t err;
  if (sc.plan_ready) {
    err = cudaMemsetAsync(sc.plan + kNumItems, 0, sizeof(int64_t), stream);  // the items kernel counts from 0
  } else {
    plan_kernel<<<1, kPlanThreads, 0, stream>>>(prog, t_count, block_groups, sc.plan, flag);
    err = cudaGetLastError();
  }
  if (err != cudaSuccess || tl.num_users == 0) return err;
  items_kernel<<<static_cast<unsigned>(tl.num_users), 64, 0, stream>>>(tl, prog, t_count, sc.plan, sc.items,
                                                                        items_cap, sc.item_events, all_segments);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return launch_keep_pass(tl, prog, t_count, sc, items_cap, flag, stream);
}

}  // namespace dv365::cuda::slicing
