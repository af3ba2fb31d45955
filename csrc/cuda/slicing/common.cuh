// CUDA kernels of multi-slicing (semantics: dv365_ops/reference.py slice_membership, slice_timeline,
// sliced_pool; program layout: dv365_ops/program.py, csrc/dv365.h). Host side: ops.cpp.
//
// How sliced_pool avoids evaluating and accumulating every slice for every event:
// - Groups. Slices that differ only in their time window share one predicate (table, categorical, float
//   filters, weight): a group, as the program's plan (csrc/slice_plan.h, the one grouping of every backend)
//   forms them. W40K's 200 slices are 50 groups of 4 windows. A table's groups are cut into
//   blocks of at most block_groups (<= 32) groups; one CTA pools one block, and an event's membership in the
//   block is one uint32 mask plus one weight per group.
// - Segments. The distinct window bounds of the program cut request_ts - ts into segments that lie wholly
//   inside or outside every window. A user's timeline is ascending, so each segment is one contiguous run of
//   events: the items kernel binary-searches the bounds and emits work items (user, event range, segment) of
//   at most item_events events. Within an item every group's slices keep the same events, so the CTA sums
//   each group once, in shared memory, and adds the sum to the group's slices that cover the segment when
//   the item ends (global atomics, a few per item rather than per event).
// - The keep pass (keep_kernel, before the pooling kernels): a thread per event of each work item evaluates
//   every active group once, the categorical filters as one shared-memory table lookup per field and block,
//   and writes per block a mask of the groups that keep the event and the weights of the weighted groups
//   (Keep): evaluated in the pooling kernel, membership is paid once per CTA block that pools the event, and it
//   dominated the kernel's stalls (docs/tuning.md, DV365_SP_KEEP, has the measurements). DV365_SP_KEEP=0, or a
//   program whose keep pass would not fit in shared memory, falls back to the in-kernel evaluation below.
// - Per event: one id load, the event's fields read once and the predicates of the groups active in the
//   segment (one lane per event; with the keep pass, a mask load and only the kept events of each batch,
//   compacted), then the warp (a CTA is one warp; each lane owns two 16-byte chunks of a
//   fp32 row, eight rows in flight) adds the row into the accumulators of the groups in the union of four
//   events' masks. The forward is bound by instruction issue rather than memory (docs/tuning.md has the
//   profile): a warp that owns the whole 1 KB row pays the per-event and per-group overhead once per 8 columns,
//   and the predicates skip reloads and repeated double-precision transcendentals.
// The host plans a program once (slice_plan.h, kept per program) and uploads its device plan (groups, blocks,
// bounds) once per device and block size; each call copies it into its scratch and the items kernel adds the call's
// work items on the device, so a call with a program seen before never synchronizes with the host for its plan
// and can be captured in a CUDA graph. The backward passes reuse the plan and the membership step, and
// scatter sum_g w_g(e) * sum_{s in g covering the segment} grad[b, s] / weight_sum[b, s] into each event's row.
//
// The files of this folder, one per seam: common.cuh (the program and timeline access and the predicates),
// plan.cuh / plan.cu (the device plan: blocks and bounds from the program's plan, work items), keep.cuh / keep.cu (the keep pass),
// pool.cuh (the pooling CTAs' columns, shared memory and membership step, and their launch shape), forward.cu,
// backward.cu, slice_timeline.cu, validate.cu (the event data checks), slicing.h (the launchers ops.cpp calls)
// and ops.cpp (the host side). Every kernel file is its own translation unit without relocatable device code:
// what several kernels call lives in these headers, inline, so each kernel inlines what it calls.
#pragma once

#include <math_constants.h>

#include <cfloat>
#include <cstdint>

#include "cuda/device.cuh"
#include "cuda/slicing/slicing.h"
#include "dv365_prog.h"  // NOLINT: the one program layout

namespace dv365::cuda::slicing {

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

// Streaming multiprocessors of the current device (read once per device).
inline int sm_count() {
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

}  // namespace dv365::cuda::slicing
