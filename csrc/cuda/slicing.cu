// CUDA kernels of multi-slicing (semantics: dv365_ops/reference.py slice_membership, slice_timeline,
// sliced_pool; program layout: dv365_ops/program.py, csrc/dv365.h). Host side: csrc/cuda/slicing_ops.cpp.
//
// How sliced_pool avoids evaluating and accumulating every slice for every event:
// - Groups. Slices that differ only in their time window share one predicate (table, categorical, float
//   filters, weight): a group. W40K's 200 slices are 50 groups of 4 windows. A table's groups are cut into
//   blocks of at most block_groups (<= 32) groups; one CTA pools one block, and an event's membership in the
//   block is one uint32 mask plus one weight per group.
// - Segments. The distinct window bounds of the program cut request_ts - ts into segments that lie wholly
//   inside or outside every window. A user's timeline is ascending, so each segment is one contiguous run of
//   events: a plan kernel binary-searches the bounds and emits work items (user, event range, segment) of
//   at most item_events events. Within an item every group's slices keep the same events, so the CTA sums
//   each group once, in shared memory, and adds the sum to the group's slices that cover the segment when
//   the item ends (global atomics, a few per item rather than per event).
// - The keep pass (keep_kernel, before the pooling kernels): a thread per event of each work item evaluates
//   every active group once, the categorical filters as one shared-memory table lookup per field and block,
//   and writes per block a mask of the groups that keep the event and the weights of the weighted groups
//   (Keep). On the H200 W40K's fp32 forward takes 1.79 ms this way against 2.25 without it
//   (benchmarks/results/h200_2026-12-01-session5.md): in-kernel membership had been 40% of the pooling kernel's
//   stall samples (ncu), paid once per CTA block. DV365_SP_KEEP=0, or a program the host
//   cannot read (graph capture), falls back to the in-kernel evaluation below.
// - Per event: one id load, the event's fields read once and the predicates of the groups active in the
//   segment (one lane per event; with the keep pass, a mask load and only the kept events of each batch,
//   compacted), then the warp (a CTA is one warp; each lane owns two 16-byte chunks of a
//   fp32 row, eight rows in flight) adds the row into the accumulators of the groups in the union of four
//   events' masks. On the H200 the W40K forward was bound by instruction issue (ncu: 70% of issue slots, IPC
//   2.9, DRAM 46%) at 64-thread CTAs with 4 columns a lane: a warp that owns the whole 1 KB row pays the
//   per-event and per-group overhead once per 8 columns, and the predicates skip reloads and repeated
//   double-precision transcendentals.
// The plan (groups, blocks, bounds, items) is built on the device, so the op never synchronizes with the host
// and can be captured in a CUDA graph. The backward passes reuse the plan and the membership step, and
// scatter sum_g w_g(e) * sum_{s in g covering the segment} grad[b, s] / weight_sum[b, s] into each event's row.
#include <math_constants.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "cuda/device.cuh"
#include "cuda/slicing.h"
#include "dv365_prog.h"  // NOLINT: the one program layout

namespace dv365::cuda::slicing {
namespace {

constexpr int kBatch = 64;   // events per membership step

// ---- the program ----
struct GroupProg {  // one group's predicate (its leader slice's, without the window)
  int64_t field[prog::kNumCatFilters];
  int64_t mask[prog::kNumCatFilters];
  int64_t flags;
  double dwell_lo, dwell_hi, ratio_lo, ratio_hi, beta, gamma, s0;
};

__device__ __forceinline__ GroupProg load_group(const Program& p, int64_t s) {
  GroupProg g;
  const int64_t* r = p.prog_i + s * prog::kNumInt;
  const double* f = p.prog_f + s * prog::kNumFloat;
  g.field[0] = r[prog::kCatField0];
  g.mask[0] = r[prog::kCatMask0];
  g.field[1] = r[prog::kCatField1];
  g.mask[1] = r[prog::kCatMask1];
  g.field[2] = r[prog::kCatField2];
  g.mask[2] = r[prog::kCatMask2];
  g.flags = r[prog::kFlags];
  g.dwell_lo = f[prog::kDwellLo];
  g.dwell_hi = f[prog::kDwellHi];
  g.ratio_lo = f[prog::kRatioLo];
  g.ratio_hi = f[prog::kRatioHi];
  g.beta = f[prog::kBeta];
  g.gamma = f[prog::kGamma];
  g.s0 = f[prog::kS0];
  return g;
}

__device__ __forceinline__ bool same_bits(double a, double b) {
  return __double_as_longlong(a) == __double_as_longlong(b);
}

// Slices a and b keep the same events up to their windows (fields the flags leave unused are ignored).
__device__ bool same_group(const Program& p, int64_t a, int64_t b) {
  const int64_t* ra = p.prog_i + a * prog::kNumInt;
  const int64_t* rb = p.prog_i + b * prog::kNumInt;
  if (ra[prog::kTable] != rb[prog::kTable] || ra[prog::kFlags] != rb[prog::kFlags]) return false;
  const int64_t fields[3] = {prog::kCatField0, prog::kCatField1, prog::kCatField2};
  const int64_t masks[3] = {prog::kCatMask0, prog::kCatMask1, prog::kCatMask2};
  for (int j = 0; j < 3; ++j) {
    const bool on_a = ra[fields[j]] >= 0, on_b = rb[fields[j]] >= 0;
    if (on_a != on_b) return false;
    if (on_a && (ra[fields[j]] != rb[fields[j]] || ra[masks[j]] != rb[masks[j]])) return false;
  }
  const double* fa = p.prog_f + a * prog::kNumFloat;
  const double* fb = p.prog_f + b * prog::kNumFloat;
  const int64_t flags = ra[prog::kFlags];
  if ((flags & prog::kDwellFilter) &&
      !(same_bits(fa[prog::kDwellLo], fb[prog::kDwellLo]) && same_bits(fa[prog::kDwellHi], fb[prog::kDwellHi])))
    return false;
  if ((flags & (prog::kRatioFilter)) &&
      !(same_bits(fa[prog::kRatioLo], fb[prog::kRatioLo]) && same_bits(fa[prog::kRatioHi], fb[prog::kRatioHi])))
    return false;
  if ((flags & prog::kRatioFilter) && !same_bits(fa[prog::kBeta], fb[prog::kBeta])) return false;
  if ((flags & prog::kWeighted) &&
      !(same_bits(fa[prog::kGamma], fb[prog::kGamma]) && same_bits(fa[prog::kS0], fb[prog::kS0])))
    return false;
  return true;
}

// ---- the timeline ----
__device__ __forceinline__ int64_t load_cat(const Timeline& tl, int64_t field, int64_t e) {
  const int64_t i = field * tl.n + e;
  switch (tl.cat_bytes) {
    case 1: return static_cast<const int8_t*>(tl.cats)[i];
    case 2: return static_cast<const int16_t*>(tl.cats)[i];
    case 4: return static_cast<const int32_t*>(tl.cats)[i];
    default: return static_cast<const int64_t*>(tl.cats)[i];
  }
}

// request_ts - ts with int64 wrap-around (overflow is reported by the validation kernel).
__device__ __forceinline__ int64_t delta(int64_t request_ts, int64_t ts) {
  return static_cast<int64_t>(static_cast<uint64_t>(request_ts) - static_cast<uint64_t>(ts));
}

__device__ __forceinline__ void user_range(const Timeline& tl, int64_t b, int64_t& lo, int64_t& hi) {
  lo = max(int64_t(0), min(tl.n, tl.offsets[b]));
  hi = max(lo, min(tl.n, tl.offsets[b + 1]));
}

// dur ** beta as the reference computes it: exact for beta = 1 and (correctly rounded sqrt) beta = 0.5, the
// common cases; pow otherwise.
__device__ __forceinline__ double beta_pow(double dur, double beta) {
  return beta == 1.0 ? dur : (beta == 0.5 ? fabs(sqrt(dur)) : pow(dur, beta));  // pow(-0, 0.5) = +0
}

// One event's fields, read once for all the groups evaluated on it: the first kPackedCats categorical values
// a byte each (0xFF for a value outside [0, 63], reported when a group reads it), the float fields, and for the
// last beta and gamma seen (groups mostly share them) dwell / dur ** beta and log1p(dwell) / log1p(gamma * dur),
// so a group costs a few integer ops and compares rather than three loads, double-precision transcendentals
// and divisions.
struct Event {
  int64_t e;
  uint64_t cats;
  double dur, dwell;
  bool has_beta, has_gamma;
  double beta, ratio, gamma, den, score, log_dwell;
};

// fields: when given, only the (at most kNumCatFilters) fields one predicate reads are loaded.
__device__ __forceinline__ Event load_event(const Timeline& tl, int64_t e, const int64_t* fields = nullptr) {
  Event ev;
  ev.e = e;
  ev.cats = 0;
  const int64_t packed = min(tl.cat_fields, int64_t(kPackedCats));
  const int64_t count = fields ? prog::kNumCatFilters : packed;
  for (int64_t j = 0; j < count; ++j) {
    const int64_t f = fields ? min(fields[j], tl.cat_fields - 1) : j;
    if (f < 0 || f >= packed) continue;
    const int64_t v = load_cat(tl, f, e);
    const uint64_t byte = (v < 0 || v > prog::kMaxCatValue) ? 0xFFu : static_cast<uint64_t>(v);
    ev.cats |= byte << (8 * f);
  }
  // outside its domain a field is unknown, read as NaN (dv365_ops/program.py): a dwell must be finite and >= 0,
  // a duration finite and > 0 (0, a photo, has no ratio and no score)
  const double dur = tl.floats ? static_cast<double>(tl.floats[prog::kFloatDuration * tl.n + e]) : 0.0;
  const double dwell = tl.floats ? static_cast<double>(tl.floats[prog::kFloatDwell * tl.n + e]) : 0.0;
  ev.dur = (dur > 0.0 && dur <= DBL_MAX) ? dur : CUDART_NAN;
  ev.dwell = (dwell >= 0.0 && dwell <= DBL_MAX) ? dwell : CUDART_NAN;
  ev.has_beta = ev.has_gamma = false;
  ev.beta = ev.ratio = ev.gamma = ev.den = ev.score = ev.log_dwell = 0.0;
  return ev;
}

// The float filters and the weight of one predicate (w: 1 when unweighted).
__device__ __forceinline__ bool float_keep(const GroupProg& p, const Timeline& tl, Event& ev, float& w) {
  w = 1.f;
  const int64_t flags = p.flags;
  if (tl.floats == nullptr) return (flags & prog::kAllFlags) == 0;
  if (flags & prog::kDwellFilter) {
    if (!(ev.dwell >= p.dwell_lo && ev.dwell <= p.dwell_hi)) return false;
  }
  if (flags & prog::kRatioFilter) {
    if (!ev.has_beta || !same_bits(p.beta, ev.beta)) {
      ev.has_beta = true;
      ev.beta = p.beta;
      ev.ratio = ev.dwell / beta_pow(ev.dur, p.beta);
    }
    const double r = ev.ratio;
    if (!(r >= p.ratio_lo && r <= p.ratio_hi)) return false;
  }
  if (flags & prog::kWeighted) {
    if (!ev.has_gamma || !same_bits(p.gamma, ev.gamma)) {
      if (!ev.has_gamma) ev.log_dwell = log1p(ev.dwell);
      ev.has_gamma = true;
      ev.gamma = p.gamma;
      ev.den = log1p(p.gamma * ev.dur);
      ev.score = ev.log_dwell / ev.den;
    }
    const double den = ev.den;
    const double s = ev.score;
    if (!(den > 0 && s > p.s0)) return false;
    w = static_cast<float>(fmin(s, prog::kMaxScore));
  }
  return true;
}

// One predicate (without the window) on an event, with its weight.
__device__ __forceinline__ bool group_keep(const GroupProg& p, const Timeline& tl, Event& ev, float& w,
                                           int32_t* flag) {
  w = 1.f;
#pragma unroll
  for (int j = 0; j < prog::kNumCatFilters; ++j) {
    const int64_t field = p.field[j];
    if (field < 0) continue;
    if (tl.cat_fields == 0) return false;
    const int64_t f = min(field, tl.cat_fields - 1);
    const int64_t v = f < kPackedCats ? static_cast<int64_t>((ev.cats >> (8 * f)) & 0xFFu) : load_cat(tl, f, ev.e);
    if (v < 0 || v > prog::kMaxCatValue) {
      set_error(flag, kCatOutOfRange);
      return false;
    }
    if (((p.mask[j] >> v) & 1) == 0) return false;
  }
  return float_keep(p, tl, ev, w);
}

// One slice's full predicate (slice_timeline).
__device__ __forceinline__ bool slice_keep(const Program& p, int64_t s, const Timeline& tl, int64_t e,
                                           int64_t request_ts, float& w, int32_t* flag) {
  const int64_t* r = p.prog_i + s * prog::kNumInt;
  const int64_t dt = delta(request_ts, tl.ts[e]);
  w = 1.f;
  if (!(dt > r[prog::kWinLo] && dt <= r[prog::kWinHi])) return false;
  const GroupProg g = load_group(p, s);
  Event ev = load_event(tl, e, g.field);
  return group_keep(g, tl, ev, w, flag);
}

// ---- the plan ----
// int64 layout: header[32] | slice_block[S] | slice_pos[S] | leader[S] | grank[S] | vals[2S] | first[2S] |
//               bounds[2S] | covered[2S + 1] | group_leader[S] | block_first[S + T] | block_count[S + T] |
//               block_table[S + T] | tcount[T] | tbase[T] | bbase[T] | wslot[S]   (17 S + 6 T + 33 <= plan_elems)
// wslot[g]: group g's row in the keep pass's weights (its rank among the weighted groups), -1 for an unweighted
// group (a kept event weighs 1).
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

// ---- the keep pass ----
constexpr int kKeepThreads = 256;
constexpr int kCatValues = prog::kMaxCatValue + 1;  // 64

// What the keep pass holds per block in shared memory: for each packed field f (< Keep::fields) the groups that
// read it (reads[f]) and, in the tables, per value v the groups whose filters on f all accept v (every group
// that does not read f); the groups with float filters or a weight (flt), those reading a field beyond the
// packed ones (full: evaluated by group_keep), and the weighted ones.
struct BlockKeep {
  int64_t first;  // the block's first group
  uint32_t flt, full, weighted, fields;  // fields: the packed fields some group of the block reads
  uint32_t reads[kPackedCats];
};

// The keep pass runs (ran) for this plan (its buffers hold every block and weighted group).
__device__ __forceinline__ bool keep_ready(const Keep& kp, const PlanView& v, const Timeline& tl) {
  return kp.mask != nullptr && v.hdr[kNumBlocks] <= kp.blocks && v.hdr[kNumGroups] <= kp.groups &&
         v.hdr[kNumWeighted] <= kp.weighted && min(tl.cat_fields, int64_t(kPackedCats)) == kp.fields;
}

size_t keep_smem_bytes(const Keep& kp) {
  return sizeof(GroupProg) * kp.groups + sizeof(BlockKeep) * kp.blocks + sizeof(int) * kp.groups +
         sizeof(uint32_t) * kp.blocks + sizeof(uint32_t) * kp.blocks * kp.fields * kCatValues;
}

// One CTA per work item (grid-stride), a thread per event: every active group of every block on the event, with
// the event's fields read once (see Keep). The categorical filters of a block's groups are one table lookup per
// packed field the block reads (an AND of masks); the float filters and weights are evaluated per group, with
// the event's dur ** beta and log1p terms cached across groups (Event). Groups, tables and per-block facts are
// built in shared memory first; each item's active groups per block are found with a thread per slice.
__global__ void __launch_bounds__(kKeepThreads) keep_kernel(Timeline tl, Program p, int64_t t_count,
                                                            const int64_t* plan_raw, const int64_t* __restrict__ items,
                                                            int64_t items_cap, Keep kp, int32_t* flag) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const PlanView v(const_cast<int64_t*>(plan_raw), p.s, t_count);
  if (!keep_ready(kp, v, tl)) return;  // the pooling kernels evaluate the predicates
  const int64_t groups = v.hdr[kNumGroups], blocks = v.hdr[kNumBlocks], k = v.hdr[kNumBounds];
  const int nf = static_cast<int>(kp.fields);
  GroupProg* group = reinterpret_cast<GroupProg*>(smem_raw);            // [kp.groups]
  BlockKeep* bk = reinterpret_cast<BlockKeep*>(group + kp.groups);      // [kp.blocks]
  int* wsl = reinterpret_cast<int*>(bk + kp.blocks);                    // [kp.groups]
  uint32_t* active = reinterpret_cast<uint32_t*>(wsl + kp.groups);      // [kp.blocks]
  uint32_t* table = active + kp.blocks;                                 // [kp.blocks][nf][kCatValues]
  for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
    group[g] = load_group(p, v.group_leader[g]);
    wsl[g] = static_cast<int>(v.wslot[g]);
  }
  __syncthreads();
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) {
    BlockKeep kb{};
    kb.first = v.block_first[b];
    const int count = static_cast<int>(v.block_count[b]);
    for (int g = 0; g < count; ++g) {
      const GroupProg& gp = group[kb.first + g];
      const uint32_t bit = 1u << g;
      if (gp.flags & prog::kAllFlags) kb.flt |= bit;
      if (gp.flags & prog::kWeighted) kb.weighted |= bit;
      for (int j = 0; j < prog::kNumCatFilters; ++j) {
        const int64_t f = gp.field[j];
        if (f < 0) continue;
        if (f < nf) {
          kb.reads[f] |= bit;
          kb.fields |= 1u << f;
        } else {
          kb.full |= bit;  // beyond the packed fields, or no categorical fields at all: group_keep decides
        }
      }
    }
    bk[b] = kb;
  }
  for (int64_t i = threadIdx.x; i < blocks * nf * kCatValues; i += blockDim.x) {
    const int64_t b = i / (nf * kCatValues);
    const int f = static_cast<int>(i / kCatValues % nf), val = static_cast<int>(i % kCatValues);
    const int64_t first = v.block_first[b];
    const int count = static_cast<int>(v.block_count[b]);
    uint32_t bits = 0;
    for (int g = 0; g < count; ++g) {
      const GroupProg& gp = group[first + g];
      bool ok = true;
      for (int j = 0; j < prog::kNumCatFilters; ++j) ok = ok && (gp.field[j] != f || ((gp.mask[j] >> val) & 1));
      if (ok) bits |= 1u << g;
    }
    table[i] = bits;
  }
  const int64_t n_items = min(v.hdr[kNumItems], items_cap);
  for (int64_t it = blockIdx.x; it < n_items; it += gridDim.x) {
    const int64_t e_begin = items[4 * it + 1], e_end = items[4 * it + 2], j = items[4 * it + 3];
    __syncthreads();  // the tables are built; the previous item is done with active
    for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) active[b] = 0;
    __syncthreads();
    for (int64_t s = threadIdx.x; s < p.s; s += blockDim.x) {
      const int64_t blk = v.slice_block[s];
      const int64_t* r = p.prog_i + s * prog::kNumInt;
      if (blk >= 0 && covers(r[prog::kWinLo], r[prog::kWinHi], j, k, v.bounds))
        atomicOr(&active[blk], 1u << v.slice_pos[s]);
    }
    __syncthreads();
    for (int64_t e = e_begin + threadIdx.x; e < e_end; e += blockDim.x) {
      Event ev = load_event(tl, e);
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const uint32_t act = active[blk];
        if (act == 0) continue;
        const BlockKeep& kb = bk[blk];
        const uint32_t* tb = table + blk * nf * kCatValues;
        uint32_t mask = act;
        for (uint32_t fs = kb.fields; fs; fs &= fs - 1) {
          const int f = __ffs(fs) - 1;
          const uint32_t val = static_cast<uint32_t>((ev.cats >> (8 * f)) & 0xFFu);
          if (val < kCatValues) {
            mask &= tb[f * kCatValues + val];
          } else {  // outside [0, 63] (also reported by the timeline checks)
            if (kb.reads[f] & act) set_error(flag, kCatOutOfRange);
            mask &= ~kb.reads[f];
          }
        }
        for (uint32_t bits = act & (kb.flt | kb.full); bits; bits &= bits - 1) {
          const int g = __ffs(bits) - 1;
          const uint32_t bit = 1u << g;
          const GroupProg& gp = group[kb.first + g];
          float w = 0.f;
          const bool kept = (mask & bit) && ((kb.full & bit) ? group_keep(gp, tl, ev, w, flag)
                                                             : float_keep(gp, tl, ev, w));
          if (!kept) mask &= ~bit;
          if (kb.weighted & bit) kp.w[wsl[kb.first + g] * kp.n + e] = kept ? w : 0.f;
        }
        kp.mask[blk * kp.n + e] = mask;
      }
    }
  }
}

// ---- the CTA's columns ----
// A CTA is one warp. Lane l owns H chunks of C consecutive columns (C * sizeof(T) = 16 bytes, one vector
// load): chunk h covers columns h * 32 C + l C + [0, C) of the CTA's tile of 32 H C columns. Each load or
// shared-memory access instruction of the warp thus covers one contiguous span (a row's 1 KB in fp32 is
// H = 2 instructions of 512 bytes), and the per-event overhead (mask test, row address, loop control, the
// weight load) is paid once per H * C columns.
template <typename T, int C>
struct alignas(sizeof(T) * C < 16 ? sizeof(T) * C : 16) Chunk {
  T v[C];
};

constexpr int kWarp = 32;

template <int C, int H>
struct Cols {
  static constexpr int kTile = kWarp * H * C;
  int64_t base;  // the tile's first column
  int lane;
  __device__ __forceinline__ int64_t col(int h) const { return base + h * kWarp * C + lane * C; }
  __device__ __forceinline__ int off(int h) const { return h * kWarp * C + lane * C; }  // within the tile
};

// ---- the membership step shared by the forward and backward kernels ----
template <typename acc_t>
struct Smem {
  GroupProg* group;  // [block_groups]
  float* w;          // [block_groups][kBatch]: the weight of each (group, event), 0 when not kept
  uint32_t* mask;    // [kBatch]
  int64_t* row;      // [kBatch]
  acc_t* wsum;       // [block_groups]
  acc_t* acc;        // [block_groups][tile]
  int* wsl;          // [block_groups]: each group's row in the keep pass's weights (PlanView::wslot)
};

// groups: the block's predicates are held (no keep pass: the kernel evaluates them).
template <typename acc_t>
__host__ __device__ size_t smem_bytes(int block_groups, int tile, bool groups) {
  size_t b = 0;
  b += sizeof(acc_t) * block_groups * tile;
  if (groups) b += sizeof(GroupProg) * block_groups;
  b += sizeof(int64_t) * kBatch;
  b += sizeof(acc_t) * block_groups;
  b += sizeof(float) * kBatch * block_groups;
  b += sizeof(uint32_t) * kBatch;
  b += sizeof(int) * block_groups;
  return b;
}

// acc, group, row and w have sizes that are multiples of 16 bytes, so the vector accesses to acc and w are
// aligned.
template <typename acc_t>
__device__ Smem<acc_t> carve(unsigned char* raw, int block_groups, int tile, bool groups) {
  Smem<acc_t> s;
  s.acc = reinterpret_cast<acc_t*>(raw);
  raw += sizeof(acc_t) * block_groups * tile;
  s.group = nullptr;
  if (groups) {
    s.group = reinterpret_cast<GroupProg*>(raw);
    raw += sizeof(GroupProg) * block_groups;
  }
  s.row = reinterpret_cast<int64_t*>(raw);
  raw += sizeof(int64_t) * kBatch;
  s.w = reinterpret_cast<float*>(raw);
  raw += sizeof(float) * kBatch * block_groups;
  s.wsum = reinterpret_cast<acc_t*>(raw);
  raw += sizeof(acc_t) * block_groups;
  s.mask = reinterpret_cast<uint32_t*>(raw);
  raw += sizeof(uint32_t) * kBatch;
  s.wsl = reinterpret_cast<int*>(raw);
  return s;
}

// Evaluates the active groups on events [e0, e0 + kBatch) ∩ [.., e1): masks, weights, rows. Ends before a
// barrier (the caller's).
template <typename acc_t>
__device__ __forceinline__ void membership(const Smem<acc_t>& sh, const Timeline& tl, int ng, uint32_t active,
                                           int64_t e0, int64_t e1, const int64_t* __restrict__ ids, int64_t num_rows,
                                           int32_t* flag) {
  for (int el = threadIdx.x; el < kBatch; el += blockDim.x) {
    const int64_t e = e0 + el;
    uint32_t mask = 0;
    int64_t id = 0;
    if (e < e1) {
      id = ids[e];
      if (id < 0 || id >= num_rows) {
        set_error(flag, kIdOutOfRange);
        id = 0;
      } else {
        Event ev = load_event(tl, e);
        for (int g = 0; g < ng; ++g) {
          float wg = 0.f;
          if (((active >> g) & 1u) && group_keep(sh.group[g], tl, ev, wg, flag)) {
            mask |= 1u << g;
          } else {
            wg = 0.f;
          }
          sh.w[g * kBatch + el] = wg;
        }
      }
    }
    if (mask == 0) {
      for (int g = 0; g < ng; ++g) sh.w[g * kBatch + el] = 0.f;
    }
    sh.mask[el] = mask;
    sh.row[el] = id;
  }
}


// The membership step from the keep pass's output (one warp): the block's masks of events [e0, e0 + kBatch) ∩
// [.., e1) and the weights of their kept groups, the ids of the kept events. kCompact: only the events some
// active group keeps, in event order from position 0, then empty events (mask 0, weight 0) up to the next
// multiple of 16; returns their count. Else every event at its position (mask 0 for the others); returns the
// batch's event count. Ends before a barrier (the caller's).
template <bool kCompact, typename acc_t>
__device__ __forceinline__ int membership_kept(const Smem<acc_t>& sh, const Keep& kp, int64_t blk, int ng,
                                               uint32_t active, int64_t e0, int64_t e1,
                                               const int64_t* __restrict__ ids, int64_t num_rows, int32_t* flag) {
  const int lane = threadIdx.x;
  const uint32_t* __restrict__ bm = kp.mask + blk * kp.n;
  int live = 0;
#pragma unroll
  for (int el0 = 0; el0 < kBatch; el0 += kWarp) {
    const int el = el0 + lane;
    const int64_t e = e0 + el;
    uint32_t mask = 0;
    int64_t id = 0;
    if (active != 0 && e < e1) {
      mask = bm[e] & active;
      if (mask != 0) {
        id = ids[e];
        if (id < 0 || id >= num_rows) {
          set_error(flag, kIdOutOfRange);
          id = 0;
          mask = 0;
        }
      }
    }
    int pos = el;
    if constexpr (kCompact) {
      const uint32_t kept = __ballot_sync(0xffffffffu, mask != 0);
      pos = live + __popc(kept & ((1u << lane) - 1u));
      live += __popc(kept);
      if (mask == 0) continue;
    }
    for (int g = 0; g < ng; ++g) {
      float w = 0.f;
      if ((mask >> g) & 1u) {
        const int ws = sh.wsl[g];
        w = ws >= 0 ? kp.w[ws * kp.n + e] : 1.f;
      }
      sh.w[g * kBatch + pos] = w;
    }
    sh.mask[pos] = mask;
    sh.row[pos] = id;
  }
  if constexpr (kCompact) {
    const int end = min(kBatch, (live + 15) / 16 * 16);
    for (int pos = live + lane; pos < end; pos += kWarp) {
      for (int g = 0; g < ng; ++g) sh.w[g * kBatch + pos] = 0.f;
      sh.mask[pos] = 0;
      sh.row[pos] = 0;
    }
    return live;
  }
  return static_cast<int>(min(static_cast<int64_t>(kBatch), e1 - e0));
}

struct Launch {
  int64_t d, col_tiles, max_blocks, items_cap;
  int bg;
  int acc;  // Tuning's
  Keep keep;
};

// What every pooling CTA starts with: its block's groups in shared memory, the plan, its columns.
template <typename acc_t, int C, int H>
struct Cta {
  Smem<acc_t> sh;
  PlanView v;
  int64_t blk, table, k, n_items;
  int ng;  // 0: this CTA's block does not exist
  Cols<C, H> cols;
  bool valid[H];  // chunk h lies within the D columns (D % C == 0)

  __device__ Cta(unsigned char* raw, const Program& p, const Tables& tabs, const int64_t* plan_raw, const Launch& L)
      : sh(carve<acc_t>(raw, L.bg, Cols<C, H>::kTile, L.keep.mask == nullptr)),
        v(const_cast<int64_t*>(plan_raw), p.s, tabs.num_tables),
        blk(blockIdx.y),
        table(0),
        k(v.hdr[kNumBounds]),
        n_items(min(v.hdr[kNumItems], L.items_cap)),
        ng(0) {
    cols.base = static_cast<int64_t>(blockIdx.z) * Cols<C, H>::kTile;
    cols.lane = threadIdx.x;
#pragma unroll
    for (int h = 0; h < H; ++h) valid[h] = cols.col(h) < L.d;
    if (blk >= v.hdr[kNumBlocks]) return;
    ng = static_cast<int>(v.block_count[blk]);
    const int64_t first = v.block_first[blk];
    table = v.block_table[blk];
    for (int g = threadIdx.x; g < ng; g += blockDim.x) {
      if (sh.group != nullptr) sh.group[g] = load_group(p, v.group_leader[first + g]);
      sh.wsl[g] = static_cast<int>(v.wslot[first + g]);
    }
  }

  // Calls f(s, g) for every slice s of this block whose window covers segment j (g: its group's position),
  // in slice order, on every lane (the lanes test 32 slices at once).
  template <typename F>
  __device__ __forceinline__ void for_covering(const Program& p, int64_t j, F&& f) const {
    for (int64_t s0 = 0; s0 < p.s; s0 += kWarp) {
      const int64_t s = s0 + cols.lane;
      bool hit = false;
      if (s < p.s && v.slice_block[s] == blk) {
        const int64_t* r = p.prog_i + s * prog::kNumInt;
        hit = covers(r[prog::kWinLo], r[prog::kWinHi], j, k, v.bounds);
      }
      for (uint32_t bits = __ballot_sync(0xffffffffu, hit); bits; bits &= bits - 1) {
        const int64_t sl = s0 + __ffs(bits) - 1;
        f(sl, static_cast<int>(v.slice_pos[sl]));
      }
    }
  }

  // The groups of this block with a slice covering segment j.
  __device__ __forceinline__ uint32_t active_groups(const Program& p, int64_t j) const {
    uint32_t active = 0;
    for_covering(p, j, [&](int64_t, int g) { active |= 1u << g; });
    return active;
  }
};

template <typename T, int C>
__device__ __forceinline__ Chunk<T, C> load_chunk(const T* p) {
  return *reinterpret_cast<const Chunk<T, C>*>(p);
}

// ---- forward ----
// grid: x strides over the items, y = block, z = column tile; one warp per CTA.
// R: rows in flight per lane (a multiple of 4 dividing kBatch).
template <typename scalar_t, typename acc_t, int C, int H, int R>
__global__ void __launch_bounds__(kWarp) pool_kernel(Timeline tl, Tables tabs, Program p, const int64_t* plan_raw,
                                                      const int64_t* __restrict__ items, Launch L,
                                                      acc_t* __restrict__ num, acc_t* __restrict__ wacc,
                                                      int32_t* flag) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Cta<acc_t, C, H> cta(smem_raw, p, tabs, plan_raw, L);
  const Smem<acc_t>& sh = cta.sh;
  const int ng = cta.ng;
  if (ng == 0) return;
  constexpr int kTile = Cols<C, H>::kTile;
  const scalar_t* table = static_cast<const scalar_t*>(tabs.table[cta.table]);
  const int64_t stride = tabs.row_stride[cta.table];
  const int64_t* ids = tabs.ids[cta.table];
  const int lane = threadIdx.x;
  const bool kept = keep_ready(L.keep, cta.v, tl);
  if (!kept && sh.group == nullptr) {  // the host's bounds on the plan were wrong: never silently wrong sums
    if (threadIdx.x == 0) set_error(flag, kInternal);
    return;
  }
  for (int64_t it = blockIdx.x; it < cta.n_items; it += gridDim.x) {
    const int64_t b = items[4 * it], e_begin = items[4 * it + 1], e_end = items[4 * it + 2], j = items[4 * it + 3];
    const uint32_t active = cta.active_groups(p, j);
    if (active == 0) continue;
    __syncthreads();  // the previous item's flush has read the accumulators
    for (int i = lane; i < ng * kTile; i += kWarp) sh.acc[i] = acc_t(0);
    for (int g = lane; g < ng; g += kWarp) sh.wsum[g] = acc_t(0);
    uint32_t touched = 0;  // the groups that kept an event of the item
    for (int64_t e0 = e_begin; e0 < e_end; e0 += kBatch) {
      __syncthreads();
      // the batch's kept events, compacted (the keep pass), or every event of the batch
      int nb;
      if (kept) {
        nb = membership_kept<true, acc_t>(sh, L.keep, cta.blk, ng, active, e0, e_end, ids, tabs.rows[cta.table], flag);
      } else {
        membership<acc_t>(sh, tl, ng, active, e0, e_end, ids, tabs.rows[cta.table], flag);
        nb = static_cast<int>(min(static_cast<int64_t>(kBatch), e_end - e0));
      }
      __syncthreads();
      for (int u0 = 0; u0 < nb; u0 += R) {
        Chunk<scalar_t, C> raw[R][H];
#pragma unroll
        for (int u = 0; u < R; ++u) {
          const bool live = u0 + u < nb && sh.mask[u0 + u] != 0;
          const scalar_t* row = table + sh.row[u0 + u] * stride;
#pragma unroll
          for (int h = 0; h < H; ++h) {
            if (live && cta.valid[h]) {
              raw[u][h] = load_chunk<scalar_t, C>(row + cta.cols.col(h));
            } else {
#pragma unroll
              for (int i = 0; i < C; ++i) raw[u][h].v[i] = from_acc<scalar_t, float>(0.f);
            }
          }
        }
        // widened once here, not once per group that uses the row (16-bit tables)
        acc_t x[R][H][C];
#pragma unroll
        for (int u = 0; u < R; ++u) {
#pragma unroll
          for (int h = 0; h < H; ++h) {
#pragma unroll
            for (int i = 0; i < C; ++i) x[u][h][i] = to_acc<acc_t>(raw[u][h].v[i]);
          }
        }
        // four events at a time (events past nb have mask 0 and weight 0), one of two ways (L.acc: 1 takes the
        // one that issues fewer instructions for these four, 0 / 2 force one):
        // - per group in the union of their masks: one weight vector load and one read-modify-write of the
        //   group's accumulators for the four events (groups most events share, like "all");
        // - per (event, group) kept: one read-modify-write with that event's row alone (groups that partition
        //   the events, like action types, where four events mostly fall in different groups).
        // On the H200 at W40K with the keep pass (benchmarks/results/h200_2026-12-01-session5.md) per union took
        // 1.79 ms in fp32 against 1.95 with the choice and 2.37 per event (bf16: 1.75 against 2.04 with the choice):
        // the batches hold only kept events, so unions are dense. Without the keep pass the choice had been best for
        // fp32 (2.35 against 2.40 per union, h200_2026-12-01.md), hence the default (Tuning::acc).
#pragma unroll
        for (int q = 0; q < R; q += 4) {
          uint32_t m[4];
          uint32_t bits = 0;
          int hits = 0;
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            m[u] = sh.mask[u0 + q + u];
            bits |= m[u];
            hits += __popc(m[u]);
          }
          touched |= bits;
          constexpr int kGroupCost = 3 + H * (2 + 4 * C), kHitCost = 4 + H * (2 + C);
          if (L.acc == 2 || (L.acc == 1 && hits * kHitCost < __popc(bits) * kGroupCost)) {
#pragma unroll
            for (int u = 0; u < 4; ++u) {
              for (uint32_t eb = m[u]; eb; eb &= eb - 1) {
                const int g = __ffs(eb) - 1;
                const acc_t w = static_cast<acc_t>(sh.w[g * kBatch + u0 + q + u]);
#pragma unroll
                for (int h = 0; h < H; ++h) {
                  auto* dst = reinterpret_cast<Chunk<acc_t, C>*>(sh.acc + g * kTile + cta.cols.off(h));
                  Chunk<acc_t, C> a = *dst;
#pragma unroll
                  for (int i = 0; i < C; ++i) a.v[i] += w * x[q + u][h][i];
                  *dst = a;
                }
                if (lane == 0) sh.wsum[g] += w;
              }
            }
            continue;
          }
          while (bits) {
            const int g = __ffs(bits) - 1;
            bits &= bits - 1;
            const float4 w4 = *reinterpret_cast<const float4*>(sh.w + g * kBatch + u0 + q);
            const acc_t w[4] = {acc_t(w4.x), acc_t(w4.y), acc_t(w4.z), acc_t(w4.w)};
#pragma unroll
            for (int h = 0; h < H; ++h) {
              auto* dst = reinterpret_cast<Chunk<acc_t, C>*>(sh.acc + g * kTile + cta.cols.off(h));
              Chunk<acc_t, C> a = *dst;
#pragma unroll
              for (int u = 0; u < 4; ++u) {
#pragma unroll
                for (int i = 0; i < C; ++i) a.v[i] += w[u] * x[q + u][h][i];
              }
              *dst = a;
            }
            if (lane == 0) sh.wsum[g] += (w[0] + w[1]) + (w[2] + w[3]);  // one writer: no atomics
          }
        }
      }
    }
    // flush: every slice of the block covering segment j gets its group's sums (each lane its own columns,
    // lane 0 the weight sums)
    __syncwarp();
    cta.for_covering(p, j, [&](int64_t s, int g) {
      if (!((touched >> g) & 1u)) return;
      if (blockIdx.z == 0 && lane == 0) atomicAdd(wacc + b * p.s + s, sh.wsum[g]);
#pragma unroll
      for (int h = 0; h < H; ++h) {
        if (!cta.valid[h]) continue;
        acc_t a[C];
        const acc_t* src = sh.acc + g * kTile + cta.cols.off(h);
#pragma unroll
        for (int i = 0; i < C; ++i) a[i] = src[i];
        atomic_add_n<acc_t, C>(num + (b * p.s + s) * L.d + cta.cols.col(h), a);
      }
    });
  }
}

template <typename scalar_t, typename acc_t>
__global__ void finalize_kernel(const acc_t* __restrict__ num, const acc_t* __restrict__ wsum, int64_t bs, int64_t d,
                                scalar_t* __restrict__ out, float* __restrict__ wsum_out) {
  const int64_t total = bs * d;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = first; i < total; i += step) {
    const acc_t s = wsum[i / d];
    out[i] = from_acc<scalar_t, acc_t>(s > 0 ? num[i] / s : acc_t(0));
  }
  for (int64_t r = first; r < bs; r += step) wsum_out[r] = static_cast<float>(wsum[r]);
}

// ---- backward ----
// kRows: tabs.out[t] is [n, D] (scalar_t), written per event (stored, or added when zeroed_rows);
// else tabs.out[t] is a dense [rows, D] accumulator (acc_t), added into atomically.
template <bool kRows, typename scalar_t, typename acc_t, int C, int H>
__global__ void __launch_bounds__(kWarp) backward_kernel(Timeline tl, Tables tabs, Program p, const int64_t* plan_raw,
                                                          const int64_t* __restrict__ items, Launch L,
                                                          const scalar_t* __restrict__ grad,
                                                          const void* __restrict__ weight_sum, bool ws_double,
                                                          int32_t* flag) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Cta<acc_t, C, H> cta(smem_raw, p, tabs, plan_raw, L);
  const Smem<acc_t>& sh = cta.sh;
  const int ng = cta.ng;
  if (ng == 0) return;
  constexpr int kTile = Cols<C, H>::kTile;
  const int64_t t = cta.table;
  const int64_t* ids = tabs.ids[t];
  // a table pooled by one block has its rows stored (every event of the timeline lies in one item); a table
  // with several blocks adds into tabs.rows_acc (zeroed by zero_rows_kernel)
  const bool store = kRows && ceil_div(cta.v.tcount[t], L.bg) == 1;
  acc_t* gvec = sh.acc;  // [g][tile]: sum over the group's covering slices of grad / weight_sum
  const bool kept = keep_ready(L.keep, cta.v, tl);
  if (!kept && sh.group == nullptr) {  // the host's bounds on the plan were wrong: never silently wrong sums
    if (threadIdx.x == 0) set_error(flag, kInternal);
    return;
  }
  for (int64_t it = blockIdx.x; it < cta.n_items; it += gridDim.x) {
    const int64_t b = items[4 * it], e_begin = items[4 * it + 1], e_end = items[4 * it + 2], j = items[4 * it + 3];
    const uint32_t active = cta.active_groups(p, j);
    if (active == 0 && !store) continue;
    __syncthreads();  // the previous item is done with gvec
#pragma unroll
    for (int h = 0; h < H; ++h) {
      for (int g = 0; g < ng; ++g) {
#pragma unroll
        for (int i = 0; i < C; ++i) gvec[g * kTile + cta.cols.off(h) + i] = acc_t(0);
      }
    }
    cta.for_covering(p, j, [&](int64_t s, int g) {
      const acc_t ws = ws_double ? static_cast<acc_t>(static_cast<const double*>(weight_sum)[b * p.s + s])
                                 : static_cast<acc_t>(static_cast<const float*>(weight_sum)[b * p.s + s]);
      if (!(ws > 0)) return;
#pragma unroll
      for (int h = 0; h < H; ++h) {
        if (!cta.valid[h]) continue;
        const Chunk<scalar_t, C> gr = load_chunk<scalar_t, C>(grad + (b * p.s + s) * L.d + cta.cols.col(h));
#pragma unroll
        for (int i = 0; i < C; ++i) gvec[g * kTile + cta.cols.off(h) + i] += to_acc<acc_t>(gr.v[i]) / ws;
      }
    });
    for (int64_t e0 = e_begin; e0 < e_end; e0 += kBatch) {
      __syncthreads();
      if (kept) {
        membership_kept<false, acc_t>(sh, L.keep, cta.blk, ng, active, e0, e_end, ids, tabs.rows[t], flag);
      } else {
        membership<acc_t>(sh, tl, ng, active, e0, e_end, ids, tabs.rows[t], flag);
      }
      __syncthreads();
      const int nb = static_cast<int>(min(static_cast<int64_t>(kBatch), e_end - e0));
      for (int u = 0; u < nb; ++u) {
        uint32_t bits = sh.mask[u];
        if (!bits && !store) continue;
        acc_t a[H][C];
#pragma unroll
        for (int h = 0; h < H; ++h) {
#pragma unroll
          for (int i = 0; i < C; ++i) a[h][i] = acc_t(0);
        }
        while (bits) {
          const int g = __ffs(bits) - 1;
          bits &= bits - 1;
          const acc_t w = static_cast<acc_t>(sh.w[g * kBatch + u]);
#pragma unroll
          for (int h = 0; h < H; ++h) {
            const Chunk<acc_t, C> gv = *reinterpret_cast<const Chunk<acc_t, C>*>(gvec + g * kTile + cta.cols.off(h));
#pragma unroll
            for (int i = 0; i < C; ++i) a[h][i] += w * gv.v[i];
          }
        }
#pragma unroll
        for (int h = 0; h < H; ++h) {
          if (!cta.valid[h]) continue;
          if constexpr (kRows) {
            scalar_t* dst = static_cast<scalar_t*>(tabs.out[t]) + (e0 + u) * L.d + cta.cols.col(h);
            if (store) {
              Chunk<scalar_t, C> o;
#pragma unroll
              for (int i = 0; i < C; ++i) o.v[i] = from_acc<scalar_t, acc_t>(a[h][i]);
              *reinterpret_cast<Chunk<scalar_t, C>*>(dst) = o;
            } else {
              atomic_add_n<acc_t, C>(
                  static_cast<acc_t*>(tabs.rows_acc[t]) + (e0 + u) * L.d + cta.cols.col(h), a[h]);
            }
          } else {
            atomic_add_n<acc_t, C>(static_cast<acc_t*>(tabs.out[t]) + sh.row[u] * L.d + cta.cols.col(h), a[h]);
          }
        }
      }
    }
  }
}

// Zeroes the per-event accumulators of the tables that do not have exactly one block (grid.y = table).
template <typename acc_t>
__global__ void zero_rows_kernel(Tables tabs, const int64_t* plan_raw, int64_t s_count, int64_t bg, int64_t total) {
  const PlanView v(const_cast<int64_t*>(plan_raw), s_count, tabs.num_tables);
  const int64_t t = blockIdx.y;
  if (ceil_div(v.tcount[t], bg) == 1) return;
  acc_t* out = static_cast<acc_t*>(tabs.rows_acc[t]);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = acc_t(0);
}

// 16-bit dtypes: the per-event rows of the tables with several blocks, from their float32 accumulators.
template <typename scalar_t>
__global__ void finish_rows_kernel(Tables tabs, const int64_t* plan_raw, int64_t s_count, int64_t bg, int64_t total) {
  const PlanView v(const_cast<int64_t*>(plan_raw), s_count, tabs.num_tables);
  const int64_t t = blockIdx.y;
  if (ceil_div(v.tcount[t], bg) == 1) return;
  const float* acc = static_cast<const float*>(tabs.rows_acc[t]);
  scalar_t* out = static_cast<scalar_t*>(tabs.out[t]);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_acc<scalar_t, float>(acc[i]);
}

// ---- slice_timeline: one warp per (slice, user), a count pass then an emit pass ----
template <bool kEmit>
__global__ void slice_timeline_kernel(Timeline tl, Tables tabs, Program p, int64_t* __restrict__ lengths,
                                      const int64_t* __restrict__ starts, int64_t total, int64_t* __restrict__ values,
                                      float* __restrict__ weights, int32_t* flag) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t bcount = tl.num_users;
  if (warp >= p.s * bcount) return;
  const int64_t s = warp / bcount, b = warp % bcount;
  const int64_t table = p.prog_i[s * prog::kNumInt + prog::kTable];
  if (table < 0 || table >= tabs.num_tables) {
    if (lane == 0) {
      set_error(flag, kTableOutOfRange);
      if (!kEmit) lengths[warp] = 0;
    }
    return;
  }
  const int64_t* ids = tabs.ids[table];
  const int64_t request_ts = tl.request_ts[b];
  int64_t lo, hi;
  user_range(tl, b, lo, hi);
  int64_t count = 0;
  const int64_t base_pos = kEmit ? starts[warp] : 0;
  for (int64_t base = lo; base < hi; base += 32) {
    const int64_t e = base + lane;
    float w = 0.f;
    bool keep = false;
    if (e < hi) keep = slice_keep(p, s, tl, e, request_ts, w, flag);
    const uint32_t bits = __ballot_sync(0xffffffffu, keep);
    if (kEmit && keep) {
      const int64_t pos = base_pos + count + __popc(bits & ((1u << lane) - 1u));
      if (pos < total) {
        values[pos] = ids[e];
        weights[pos] = w;
      }
    }
    count += __popc(bits);
  }
  if (!kEmit && lane == 0) lengths[warp] = count;
}

// ---- validation of the event data (the CPU kernels' data checks) ----
__global__ void validate_timeline_kernel(Timeline tl, int32_t* flag) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t e = first; e < tl.n; e += stride) {
    for (int64_t f = 0; f < tl.cat_fields; ++f) {
      const int64_t v = load_cat(tl, f, e);
      if (v < 0 || v > prog::kMaxCatValue) set_error(flag, kCatOutOfRange);
    }
    if (e > 0 && tl.num_users > 0) {
      // e and e - 1 belong to one user unless some offsets entry equals e
      int64_t lo = 0, hi = tl.num_users;
      while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (tl.offsets[mid] <= e) lo = mid; else hi = mid;
      }
      if (tl.offsets[lo] < e && tl.ts[e - 1] > tl.ts[e]) set_error(flag, kTsOrder);
    }
  }
  for (int64_t b = first; b < tl.num_users; b += stride) {
    int64_t lo, hi;
    user_range(tl, b, lo, hi);
    if (hi == lo) continue;
    const int64_t r = tl.request_ts[b];
    for (const int64_t t : {tl.ts[lo], tl.ts[hi - 1]}) {
      const int64_t d = delta(r, t);
      if (((r ^ t) & (r ^ d)) < 0) set_error(flag, kTsOverflow);
    }
  }
}

// Every table's ids in [0, rows) (grid.y = table).
__global__ void validate_ids_kernel(Tables tabs, int64_t n, int32_t* flag) {
  const int64_t t = blockIdx.y;
  const int64_t* ids = tabs.ids[t];
  const int64_t rows = tabs.rows[t];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += stride) {
    const int64_t id = ids[e];
    if (id < 0 || id >= rows) {
      set_error(flag, kIdOutOfRange);
      return;
    }
  }
}

// ---- launch helpers ----
// Columns per 16-byte chunk, and chunks per lane (two for 4- and 8-byte types: a 1 KB fp32 row is one warp's
// two loads), when every pointer and row stride allows; else one column per lane.
template <typename scalar_t>
constexpr int chunk_cols() {
  return static_cast<int>(16 / sizeof(scalar_t));
}
template <typename scalar_t>
constexpr int chunks_per_lane() {
  return sizeof(scalar_t) >= 4 ? 2 : 1;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// tables: the forward's inputs (pointers and row strides); outs: the backward's grad and outputs.
template <int C>
bool vector_ok(const Tables& tabs, int64_t d, size_t elem, bool forward, const void* grad) {
  if (d % C != 0) return false;
  for (int64_t t = 0; t < tabs.num_tables; ++t) {
    if (forward && (tabs.row_stride[t] % C != 0 || !aligned16(tabs.table[t]))) return false;
    if (!forward && !aligned16(tabs.out[t])) return false;
  }
  return forward || aligned16(grad);
}

int sm_count() {
  static int sms[64] = {};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 0 || dev >= 64) dev = 0;
  if (sms[dev] == 0) {
    int n = 132;
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    sms[dev] = n;
  }
  return sms[dev];
}

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
  if (err != cudaSuccess || sc.keep.mask == nullptr) return err;
  const size_t smem = keep_smem_bytes(sc.keep);
  if (smem > 48 * 1024) {
    err = cudaFuncSetAttribute(keep_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(items_cap, int64_t(sm_count()) * 8));
  keep_kernel<<<static_cast<unsigned>(grid), kKeepThreads, smem, stream>>>(tl, prog, t_count, sc.plan, sc.items,
                                                                           items_cap, sc.keep, flag);
  return cudaGetLastError();
}

// The keep pass's shared memory must fit beside nothing else: larger programs skip it.
constexpr size_t kKeepSmemMax = 160 * 1024;

Scratch with_keep(Scratch sc) {
  if (sc.keep.mask != nullptr && keep_smem_bytes(sc.keep) > kKeepSmemMax) sc.keep = Keep{};
  return sc;
}

template <typename K>
cudaError_t configure(K kernel, size_t smem, int threads, int64_t items_cap, int64_t& grid_x) {
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  // the occupancy query costs tens of microseconds of host time: once per (device, kernel, smem)
  struct Key {
    int device;
    const void* kernel;
    size_t smem;
  };
  static std::mutex mu;
  static std::vector<std::pair<Key, int>> known;
  int device = 0;
  cudaGetDevice(&device);
  int per_sm = 0;
  {
    const std::lock_guard<std::mutex> lock(mu);
    for (const auto& [k, v] : known) {
      if (k.device == device && k.kernel == reinterpret_cast<const void*>(kernel) && k.smem == smem) per_sm = v;
    }
  }
  if (per_sm == 0) {
    const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
    if (err != cudaSuccess) return err;
    per_sm = std::max(per_sm, 1);
    const std::lock_guard<std::mutex> lock(mu);
    known.push_back({Key{device, reinterpret_cast<const void*>(kernel), smem}, per_sm});
  }
  // enough CTAs to fill the GPU for any one block; the rest of a block's items are strided over them
  grid_x = std::max<int64_t>(1, std::min<int64_t>(items_cap, static_cast<int64_t>(std::max(per_sm, 1)) * sm_count()));
  return cudaSuccess;
}

// A pooling kernel's launch: its columns and blocks, shared memory, and a grid that fills the GPU for any one
// block. tune.num_blocks is the plan's block count when the host knows it, else 0: the grid then covers the
// most blocks any program of S slices over T tables can have (the CTAs of blocks that do not exist return at
// once).
struct LaunchShape {
  Launch L;
  size_t smem = 0;
  dim3 grid;
};

template <int kTile, typename acc_t, typename K>
cudaError_t shape_launch(K kernel, int64_t d, const Tuning& tune, const Program& prog, const Tables& tabs,
                         int64_t items_cap, const Keep& keep, LaunchShape& shape) {
  Launch& L = shape.L;
  L.keep = keep;
  L.d = d;
  L.col_tiles = ceil_div(d, kTile);
  L.bg = tune.block_groups;
  L.acc = tune.acc;
  L.max_blocks = tune.num_blocks > 0 ? tune.num_blocks : ceil_div(prog.s, L.bg) + tabs.num_tables;
  L.items_cap = items_cap;
  shape.smem = smem_bytes<acc_t>(L.bg, kTile, keep.mask == nullptr);
  int64_t gx = 1;
  const cudaError_t err = configure(kernel, shape.smem, kWarp, items_cap, gx);
  shape.grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(L.max_blocks), static_cast<unsigned>(L.col_tiles));
  return err;
}

// The grid of the per-event row passes (zero_rows_kernel, finish_rows_kernel): grid.y = table.
dim3 rows_grid(int64_t total, int64_t num_tables) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(ceil_div(total, 256), 132 * 8)),
              static_cast<unsigned>(num_tables));
}

template <typename scalar_t, int C, int H, int R>
cudaError_t pool_typed(const Timeline& tl, const Tables& tabs, const Program& prog, int64_t d, const Tuning& tune,
                       Scratch sc, void* num, void* wacc, int32_t* flag, cudaStream_t stream, int64_t items_cap) {
  using acc_t = typename AccType<scalar_t>::type;
  auto kernel = pool_kernel<scalar_t, acc_t, C, H, R>;
  LaunchShape shape;
  const cudaError_t err =
      shape_launch<Cols<C, H>::kTile, acc_t>(kernel, d, tune, prog, tabs, items_cap, sc.keep, shape);
  if (err != cudaSuccess) return err;
  kernel<<<shape.grid, kWarp, shape.smem, stream>>>(tl, tabs, prog, sc.plan, sc.items, shape.L,
                                                    static_cast<acc_t*>(num), static_cast<acc_t*>(wacc), flag);
  return cudaGetLastError();
}

template <bool kRows, typename scalar_t, int C, int H>
cudaError_t backward_typed(const Timeline& tl, const Tables& tabs, const Program& prog, int64_t d, const Tuning& tune,
                           Scratch sc, const void* grad, const void* weight_sum, bool ws_double, int32_t* flag,
                           cudaStream_t stream, int64_t items_cap) {
  using acc_t = typename AccType<scalar_t>::type;
  auto kernel = backward_kernel<kRows, scalar_t, acc_t, C, H>;
  LaunchShape shape;
  cudaError_t err = shape_launch<Cols<C, H>::kTile, acc_t>(kernel, d, tune, prog, tabs, items_cap, sc.keep, shape);
  if (err != cudaSuccess) return err;
  const int64_t total = tl.n * d;  // per-event row elements
  const int64_t bg = shape.L.bg;
  if constexpr (kRows) {
    zero_rows_kernel<acc_t><<<rows_grid(total, tabs.num_tables), 256, 0, stream>>>(tabs, sc.plan, prog.s, bg, total);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  kernel<<<shape.grid, kWarp, shape.smem, stream>>>(tl, tabs, prog, sc.plan, sc.items, shape.L,
                                                    static_cast<const scalar_t*>(grad), weight_sum, ws_double, flag);
  err = cudaGetLastError();
  if constexpr (kRows && sizeof(scalar_t) == 2) {
    if (err != cudaSuccess) return err;
    finish_rows_kernel<scalar_t><<<rows_grid(total, tabs.num_tables), 256, 0, stream>>>(tabs, sc.plan, prog.s, bg,
                                                                                      total);
    err = cudaGetLastError();
  }
  return err;
}

}  // namespace

cudaError_t launch_sliced_pool(const Timeline& tl, const Tables& tabs, const Program& prog, int64_t d, DType dtype,
                               Tuning tune, Scratch sc, void* num, void* wacc, void* pooled, float* wsum,
                               int32_t* flag, cudaStream_t stream) {
  tune.block_groups = std::clamp(tune.block_groups, 1, kMaxBlockGroups);
  return with_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = typename AccType<scalar_t>::type;
    constexpr int C = chunk_cols<scalar_t>(), H = chunks_per_lane<scalar_t>();
    sc = with_keep(sc);
    // per union after the keep pass (its batches hold only kept events, so unions are dense); without it the
    // per-four-events choice where a lane holds two chunks of each row
    if (tune.acc < 0) tune.acc = sc.keep.mask != nullptr ? 0 : (H >= 2 ? 1 : 0);
    if (tl.n > 0 && d > 0 && prog.s > 0) {
      int64_t cap = 0;
      if (build_plan(tl, prog, tabs.num_tables, tune.block_groups, sc, false, flag, stream, cap) != cudaSuccess) return;
      cudaError_t err;
      if (!vector_ok<C>(tabs, d, sizeof(scalar_t), true, nullptr)) {
        err = pool_typed<scalar_t, 1, 1, 8>(tl, tabs, prog, d, tune, sc, num, wacc, flag, stream, cap);
      } else if (tune.rows_in_flight >= 16) {
        err = pool_typed<scalar_t, C, H, 16>(tl, tabs, prog, d, tune, sc, num, wacc, flag, stream, cap);
      } else {
        err = pool_typed<scalar_t, C, H, 8>(tl, tabs, prog, d, tune, sc, num, wacc, flag, stream, cap);
      }
      if (err != cudaSuccess) return;
    }
    const int64_t bs = tl.num_users * prog.s;
    const int64_t total = std::max<int64_t>(bs * d, bs);
    if (total == 0) return;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(total, 256), 132 * 32));
    finalize_kernel<scalar_t, acc_t><<<blocks, 256, 0, stream>>>(static_cast<const acc_t*>(num),
                                                                 static_cast<const acc_t*>(wacc), bs, d,
                                                                 static_cast<scalar_t*>(pooled), wsum);
  });
}

cudaError_t launch_sliced_pool_backward(bool rows, const Timeline& tl, const Tables& tabs, const Program& prog,
                                        int64_t d, DType dtype, Tuning tune, Scratch sc, const void* grad,
                                        const void* weight_sum, bool ws_double, int32_t* flag, cudaStream_t stream) {
  tune.block_groups = std::clamp(tune.block_groups, 1, kMaxBlockGroups);
  if (tl.n == 0 || d == 0 || prog.s == 0 || tl.num_users == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    // 16-bit dtypes take two 8-byte chunks a lane (not one of 16 bytes): each float4 atomic of the warp then
    // covers one contiguous 512 bytes of the float32 accumulators, rather than every other 16 bytes of 1 KB
    constexpr int H = 2, C = sizeof(scalar_t) == 2 ? 4 : chunk_cols<scalar_t>();
    int64_t cap = 0;
    sc = with_keep(sc);
    // the per-event rows visit every event (a table with one block stores every row, zeros included)
    if (build_plan(tl, prog, tabs.num_tables, tune.block_groups, sc, rows, flag, stream, cap) != cudaSuccess) return;
    const bool vec = vector_ok<C>(tabs, d, sizeof(scalar_t), false, grad);
    const auto run = [&](auto rows_tag) {  // errors surface through with_dtype's cudaGetLastError
      constexpr bool kRows = decltype(rows_tag)::value;
      vec ? backward_typed<kRows, scalar_t, C, H>(tl, tabs, prog, d, tune, sc, grad, weight_sum, ws_double, flag,
                                                 stream, cap)
          : backward_typed<kRows, scalar_t, 1, 1>(tl, tabs, prog, d, tune, sc, grad, weight_sum, ws_double, flag,
                                                 stream, cap);
    };
    rows ? run(std::true_type{}) : run(std::false_type{});
  });
}

cudaError_t launch_slice_timeline_count(const Timeline& tl, const Tables& tabs, const Program& prog,
                                        int64_t* lengths, int32_t* flag, cudaStream_t stream) {
  const int64_t warps = prog.s * tl.num_users;
  if (warps == 0) return cudaSuccess;
  slice_timeline_kernel<false><<<static_cast<unsigned>(ceil_div(warps * 32, 256)), 256, 0, stream>>>(
      tl, tabs, prog, lengths, nullptr, 0, nullptr, nullptr, flag);
  return cudaGetLastError();
}

cudaError_t launch_slice_timeline_emit(const Timeline& tl, const Tables& tabs, const Program& prog,
                                       const int64_t* starts, int64_t total, int64_t* values, float* weights,
                                       int32_t* flag, cudaStream_t stream) {
  const int64_t warps = prog.s * tl.num_users;
  if (warps == 0 || total == 0) return cudaSuccess;
  slice_timeline_kernel<true><<<static_cast<unsigned>(ceil_div(warps * 32, 256)), 256, 0, stream>>>(
      tl, tabs, prog, nullptr, starts, total, values, weights, flag);
  return cudaGetLastError();
}

cudaError_t launch_validate_ids(const Tables& tabs, int64_t n, int32_t* flag, cudaStream_t stream) {
  if (n == 0 || tabs.num_tables == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 132 * 4)),
                  static_cast<unsigned>(tabs.num_tables));
  validate_ids_kernel<<<grid, 256, 0, stream>>>(tabs, n, flag);
  return cudaGetLastError();
}

cudaError_t launch_validate_timeline(const Timeline& tl, int32_t* flag, cudaStream_t stream) {
  if (tl.n == 0 && tl.num_users == 0) return cudaSuccess;
  const int64_t work = std::max(tl.n, tl.num_users);
  validate_timeline_kernel<<<static_cast<unsigned>(std::min<int64_t>(ceil_div(work, 256), 132 * 8)), 256, 0,
                             stream>>>(tl, flag);
  return cudaGetLastError();
}

}  // namespace dv365::cuda::slicing
