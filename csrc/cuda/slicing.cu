// CUDA kernels of multi-slicing (semantics: dv365_ops/reference.py slice_membership, slice_timeline,
// sliced_pool; program layout: dv365_ops/program.py, csrc/dv365.h).
//
// sliced_pool never materializes the slices. A small plan kernel sorts the slices by table and cuts them
// into groups of at most G slices of one table. One CTA takes (user, group, chunk of the user's events,
// tile of D columns): per sub-chunk of 32 events a warp per event evaluates the group's slices (one lane
// per slice, a ballot gives the event's membership mask), then every thread, owning one column, gathers
// each member event's row once and adds w * row into the accumulators of the slices that keep it, held in
// shared memory. Four events are folded per accumulator update, so an update costs one shared-memory
// read-modify-write for up to four events. CTAs of one user add their partial sums with atomics; a last
// pass divides by the weight sums. The backward passes reuse the membership step and scatter
// sum_s w_s / weight_sum[b, s] * grad[b, s] into each event's row.
#include <ATen/Dispatch.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/sub.h>
#include <torch/library.h>

#include <cstdlib>
#include <functional>
#include <vector>

#include "cuda/common.cuh"

namespace dv365::cuda {
namespace {

constexpr int kMaxTables = 32;
constexpr int kSub = 32;       // events per membership step

struct SliceProg {
  int64_t field[prog::kNumCatFilters];
  int64_t mask[prog::kNumCatFilters];
  int64_t win_lo, win_hi, flags, table;
  double dwell_lo, dwell_hi, ratio_lo, ratio_hi, beta, gamma, s0;
};

struct Timeline {
  const int64_t* offsets;
  int64_t num_users, n;
  const int64_t* ts;
  const int64_t* request_ts;
  const void* cats;
  int64_t cat_fields;
  int cat_bytes;
  const void* floats;
  int float_bytes;  // 0: no float fields
};

struct TableSet {
  const void* table[kMaxTables];
  const int64_t* ids[kMaxTables];
  int64_t rows[kMaxTables];
  int64_t row_stride[kMaxTables];
  void* out[kMaxTables];
  int64_t num_tables;
};

__device__ __forceinline__ SliceProg load_prog(const int64_t* __restrict__ pi, const double* __restrict__ pf, int64_t s) {
  SliceProg p;
  const int64_t* r = pi + s * prog::kNumInt;
  const double* f = pf + s * prog::kNumFloat;
  p.field[0] = r[prog::kCatField0];
  p.mask[0] = r[prog::kCatMask0];
  p.field[1] = r[prog::kCatField1];
  p.mask[1] = r[prog::kCatMask1];
  p.field[2] = r[prog::kCatField2];
  p.mask[2] = r[prog::kCatMask2];
  p.win_lo = r[prog::kWinLo];
  p.win_hi = r[prog::kWinHi];
  p.flags = r[prog::kFlags];
  p.table = r[prog::kTable];
  p.dwell_lo = f[prog::kDwellLo];
  p.dwell_hi = f[prog::kDwellHi];
  p.ratio_lo = f[prog::kRatioLo];
  p.ratio_hi = f[prog::kRatioHi];
  p.beta = f[prog::kBeta];
  p.gamma = f[prog::kGamma];
  p.s0 = f[prog::kS0];
  return p;
}

__device__ __forceinline__ int64_t load_cat(const Timeline& tl, int64_t field, int64_t e) {
  const int64_t i = field * tl.n + e;
  switch (tl.cat_bytes) {
    case 1: return static_cast<const int8_t*>(tl.cats)[i];
    case 2: return static_cast<const int16_t*>(tl.cats)[i];
    case 4: return static_cast<const int32_t*>(tl.cats)[i];
    default: return static_cast<const int64_t*>(tl.cats)[i];
  }
}

__device__ __forceinline__ double load_float(const Timeline& tl, int64_t field, int64_t e) {
  const int64_t i = field * tl.n + e;
  return tl.float_bytes == 4 ? static_cast<double>(static_cast<const float*>(tl.floats)[i])
                             : static_cast<const double*>(tl.floats)[i];
}

struct Event {
  int64_t dt;
  double dur, dwell;
};

__device__ __forceinline__ Event load_event(const Timeline& tl, int64_t e, int64_t request_ts) {
  Event ev;
  ev.dt = static_cast<int64_t>(static_cast<uint64_t>(request_ts) - static_cast<uint64_t>(tl.ts[e]));
  ev.dur = tl.float_bytes ? load_float(tl, 0, e) : 0.0;
  ev.dwell = tl.float_bytes ? load_float(tl, 1, e) : 0.0;
  return ev;
}

// One slice's predicate on one event (dv365_ops/program.py), with its weight.
__device__ __forceinline__ bool slice_keep(const SliceProg& p, const Event& ev, const Timeline& tl, int64_t e, float& w,
                                           int32_t* flag) {
  w = 1.f;
  if (!(ev.dt > p.win_lo && ev.dt <= p.win_hi)) return false;
#pragma unroll
  for (int j = 0; j < prog::kNumCatFilters; ++j) {
    const int64_t field = p.field[j];
    if (field < 0) continue;
    if (tl.cat_fields == 0) return false;
    const int64_t v = load_cat(tl, min(field, tl.cat_fields - 1), e);
    if (v < 0 || v > prog::kMaxCatValue) {
      set_error(flag, kCatOutOfRange);
      return false;
    }
    if (((p.mask[j] >> v) & 1) == 0) return false;
  }
  const int64_t flags = p.flags;
  if (tl.float_bytes == 0) return (flags & (prog::kWeighted | prog::kDwellFilter | prog::kRatioFilter)) == 0;
  if (flags & prog::kDwellFilter) {
    if (!(ev.dwell >= p.dwell_lo && ev.dwell <= p.dwell_hi)) return false;
  }
  if (flags & prog::kRatioFilter) {
    const double r = ev.dwell / pow(ev.dur, p.beta);
    if (!(r >= p.ratio_lo && r <= p.ratio_hi)) return false;
  }
  if (flags & prog::kWeighted) {
    const double den = log1p(p.gamma * ev.dur);
    const double s = log1p(ev.dwell) / den;
    if (!(den > 0 && s > p.s0)) return false;
    w = static_cast<float>(s);
  }
  return true;
}

__device__ __forceinline__ void user_range(const Timeline& tl, int64_t b, int64_t& lo, int64_t& hi) {
  lo = max(int64_t(0), min(tl.n, tl.offsets[b]));
  hi = max(lo, min(tl.n, tl.offsets[b + 1]));
}

// ---- plan: slices sorted by table, cut into groups of at most g slices of one table ----
// plan layout (int64): perm[S] | group_table[ng] | group_start[ng] | group_count[ng] | table_first[T] | table_groups[T]
__global__ void plan_kernel(const int64_t* __restrict__ pi, int64_t s_count, int64_t t_count, int64_t g, int64_t ng,
                            int64_t* __restrict__ plan, int32_t* flag) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int64_t* perm = plan;
  int64_t* gt = perm + s_count;
  int64_t* gs = gt + ng;
  int64_t* gc = gs + ng;
  int64_t* tf = gc + ng;
  int64_t* tg = tf + t_count;
  for (int64_t i = 0; i < ng; ++i) {
    gt[i] = 0;
    gs[i] = 0;
    gc[i] = 0;
  }
  int64_t pos = 0, group = 0;
  for (int64_t s = 0; s < s_count; ++s) {
    const int64_t t = pi[s * prog::kNumInt + prog::kTable];
    if (t < 0 || t >= t_count) set_error(flag, kTableOutOfRange);
  }
  for (int64_t t = 0; t < t_count; ++t) {
    tf[t] = group;
    tg[t] = 0;
    for (int64_t s = 0; s < s_count; ++s) {
      if (pi[s * prog::kNumInt + prog::kTable] != t) continue;
      if (group >= ng) continue;  // unreachable: ng >= ceil(S / g) + T
      if (gc[group] == 0) {
        gt[group] = t;
        gs[group] = pos;
        ++tg[t];
      }
      perm[pos++] = s;
      if (++gc[group] == g) ++group;
    }
    if (group < ng && gc[group] > 0) ++group;
  }
}

// ---- the membership step shared by the forward and backward kernels ----
template <int kWords>
struct Shared {
  SliceProg prog[kWords * 32];
  int64_t slice[kWords * 32];      // global slice index of each group slice
  uint32_t mask[kSub][kWords];     // member slices of each event in the sub-chunk
  float w[kSub][kWords * 32];      // weight of each (event, slice), 0 when not kept
  int64_t row[kSub];               // the event's row in the group's table
  int32_t touched[kWords * 32];
};

template <int kWords, int kThreads>
__device__ __forceinline__ void membership(Shared<kWords>& sh, const Timeline& tl, int64_t gcount, int64_t e_begin,
                                           int64_t e_end, int64_t request_ts, const int64_t* __restrict__ ids,
                                           int64_t num_rows, float (&wsum)[kWords], int32_t* flag) {
  const int lane = threadIdx.x % 32;
  for (int el = threadIdx.x / 32; el < kSub; el += kThreads / 32) {
    const int64_t e = e_begin + el;
    bool ok = e < e_end;
    Event ev{};
    int64_t id = 0;
    if (ok) {
      id = ids[e];
      if (id < 0 || id >= num_rows) {
        if (lane == 0) set_error(flag, kIdOutOfRange);
        ok = false;
      } else {
        ev = load_event(tl, e, request_ts);
      }
    }
#pragma unroll
    for (int k = 0; k < kWords; ++k) {
      const int s = k * 32 + lane;
      float w = 0.f;
      bool keep = false;
      if (ok && s < gcount) keep = slice_keep(sh.prog[s], ev, tl, e, w, flag);
      const uint32_t bits = __ballot_sync(0xffffffffu, keep);
      w = keep ? w : 0.f;
      sh.w[el][s] = w;
      wsum[k] += w;
      if (keep) sh.touched[s] = 1;
      if (lane == 0) sh.mask[el][k] = bits;
    }
    if (lane == 0) sh.row[el] = ok ? id : 0;
  }
}

// Loads the group's slices. Ends with a barrier.
template <int kWords, int kThreads>
__device__ __forceinline__ void load_group(Shared<kWords>& sh, const int64_t* __restrict__ plan, int64_t s_count,
                                           int64_t start, int64_t gcount, const int64_t* __restrict__ pi,
                                           const double* __restrict__ pf) {
  for (int s = threadIdx.x; s < kWords * 32; s += kThreads) {
    if (s < gcount) {
      const int64_t sg = plan[start + s];
      sh.slice[s] = sg;
      sh.prog[s] = load_prog(pi, pf, sg);
    }
    sh.touched[s] = 0;
  }
  __syncthreads();
}

// blockIdx.x = (user * chunks + chunk) * col_tiles + col_tile; blockIdx.y = group
struct Grid {
  int64_t chunks, col_tiles, num_groups, s_count, d;
};

__device__ __forceinline__ void decode(const Grid& gr, int64_t& b, int64_t& chunk, int64_t& ct) {
  const int64_t x = blockIdx.x;
  ct = x % gr.col_tiles;
  chunk = (x / gr.col_tiles) % gr.chunks;
  b = x / (gr.col_tiles * gr.chunks);
}

__device__ __forceinline__ void chunk_range(const Timeline& tl, const Grid& gr, int64_t b, int64_t chunk, int64_t& lo,
                                            int64_t& hi) {
  int64_t ulo, uhi;
  user_range(tl, b, ulo, uhi);
  const int64_t len = uhi - ulo;
  const int64_t per = (len + gr.chunks - 1) / gr.chunks;
  const int64_t step = ((per + kSub - 1) / kSub) * kSub;
  lo = min(uhi, ulo + chunk * step);
  hi = min(uhi, lo + step);
}

template <typename scalar_t, typename acc_t, int kWords, int kThreads>
__global__ void __launch_bounds__(kThreads) sliced_pool_kernel(Timeline tl, TableSet ts, const int64_t* __restrict__ pi,
                                                               const double* __restrict__ pf,
                                                               const int64_t* __restrict__ plan, Grid gr,
                                                               acc_t* __restrict__ num, acc_t* __restrict__ wsum_out,
                                                               int32_t* flag) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& sh = *reinterpret_cast<Shared<kWords>*>(smem_raw);
  acc_t* acc = reinterpret_cast<acc_t*>(smem_raw + sizeof(Shared<kWords>));
  const int64_t group = blockIdx.y;
  const int64_t* gt = plan + gr.s_count;
  const int64_t gcount = gt[2 * gr.num_groups + group];
  if (gcount == 0) return;
  const int64_t t = gt[group], start = gt[gr.num_groups + group];
  int64_t b, chunk, ct;
  decode(gr, b, chunk, ct);
  int64_t lo, hi;
  chunk_range(tl, gr, b, chunk, lo, hi);
  if (lo >= hi) return;
  for (int i = threadIdx.x; i < kWords * 32 * kThreads; i += kThreads) acc[i] = 0;
  load_group<kWords, kThreads>(sh, plan, gr.s_count, start, gcount, pi, pf);
  const int64_t col = ct * kThreads + threadIdx.x;
  const bool has_col = col < gr.d;
  const scalar_t* table = static_cast<const scalar_t*>(ts.table[t]);
  const int64_t stride = ts.row_stride[t];
  const int64_t request_ts = tl.request_ts[b];
  float wsum[kWords] = {};
  __syncthreads();
  for (int64_t e0 = lo; e0 < hi; e0 += kSub) {
    membership<kWords, kThreads>(sh, tl, gcount, e0, hi, request_ts, ts.ids[t], ts.rows[t], wsum, flag);
    __syncthreads();
    acc_t x[kSub];
#pragma unroll
    for (int u = 0; u < kSub; ++u) {
      uint32_t any = 0;
#pragma unroll
      for (int k = 0; k < kWords; ++k) any |= sh.mask[u][k];
      x[u] = (any && has_col) ? static_cast<acc_t>(table[sh.row[u] * stride + col]) : acc_t(0);
    }
#pragma unroll
    for (int u = 0; u < kSub; u += 4) {
#pragma unroll
      for (int k = 0; k < kWords; ++k) {
        uint32_t bits = sh.mask[u][k] | sh.mask[u + 1][k] | sh.mask[u + 2][k] | sh.mask[u + 3][k];
        while (bits) {
          const int s = k * 32 + __ffs(bits) - 1;
          bits &= bits - 1;
          acc_t v = static_cast<acc_t>(sh.w[u][s]) * x[u];
          v += static_cast<acc_t>(sh.w[u + 1][s]) * x[u + 1];
          v += static_cast<acc_t>(sh.w[u + 2][s]) * x[u + 2];
          v += static_cast<acc_t>(sh.w[u + 3][s]) * x[u + 3];
          acc[s * kThreads + threadIdx.x] += v;
        }
      }
    }
    __syncthreads();
  }
  const int lane = threadIdx.x % 32;
  if (ct == 0) {
#pragma unroll
    for (int k = 0; k < kWords; ++k) {
      const int s = k * 32 + lane;
      if (s < gcount && wsum[k] != 0.f) atomicAdd(wsum_out + b * gr.s_count + sh.slice[s], static_cast<acc_t>(wsum[k]));
    }
  }
  if (!has_col) return;
  for (int s = 0; s < gcount; ++s) {
    if (sh.touched[s]) atomicAdd(num + (b * gr.s_count + sh.slice[s]) * gr.d + col, acc[s * kThreads + threadIdx.x]);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void sliced_pool_finalize_kernel(const acc_t* __restrict__ num, const acc_t* __restrict__ wsum, int64_t bs,
                                            int64_t d, scalar_t* __restrict__ out, float* __restrict__ wsum_out) {
  const int64_t total = bs * d;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / d;
    const acc_t s = wsum[r];
    out[i] = static_cast<scalar_t>(s > 0 ? num[i] / s : acc_t(0));
    if (i % d == 0) wsum_out[r] = static_cast<float>(s);
  }
  if (d == 0) {
    for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < bs;
         r += static_cast<int64_t>(gridDim.x) * blockDim.x)
      wsum_out[r] = static_cast<float>(wsum[r]);
  }
}

// Backward. kRows: grid.y = table, each CTA walks the table's groups and writes rows[e] for every event of its
// chunk (no atomics). Dense: grid.y = group, atomics into the table's accumulation buffer.
template <bool kRows, typename scalar_t, typename acc_t, int kWords, int kThreads>
__global__ void __launch_bounds__(kThreads) sliced_pool_backward_kernel(
    Timeline tl, TableSet ts, const int64_t* __restrict__ pi, const double* __restrict__ pf,
    const int64_t* __restrict__ plan, Grid gr, const scalar_t* __restrict__ grad, const float* __restrict__ weight_sum,
    int32_t* flag) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto& sh = *reinterpret_cast<Shared<kWords>*>(smem_raw);
  acc_t* gs = reinterpret_cast<acc_t*>(smem_raw + sizeof(Shared<kWords>));
  const int64_t* gt = plan + gr.s_count;
  const int64_t* tf = gt + 3 * gr.num_groups;
  int64_t b, chunk, ct;
  decode(gr, b, chunk, ct);
  int64_t lo, hi;
  chunk_range(tl, gr, b, chunk, lo, hi);
  if (lo >= hi) return;
  const int64_t col = ct * kThreads + threadIdx.x;
  const bool has_col = col < gr.d;
  const int64_t request_ts = tl.request_ts[b];
  int64_t t, g_first, g_count;
  if constexpr (kRows) {
    t = blockIdx.y;
    g_first = tf[t];
    g_count = tf[ts.num_tables + t];
  } else {
    g_first = blockIdx.y;
    g_count = gt[2 * gr.num_groups + g_first] > 0 ? 1 : 0;
    t = gt[g_first];
  }
  scalar_t* rows_out = static_cast<scalar_t*>(ts.out[t]);
  acc_t* dense_out = static_cast<acc_t*>(ts.out[t]);
  if (kRows && g_count == 0) {
    if (has_col)
      for (int64_t e = lo; e < hi; ++e) rows_out[e * gr.d + col] = scalar_t(0);
    return;
  }
  float wsum_unused[kWords] = {};
  for (int64_t gi = 0; gi < g_count; ++gi) {
    const int64_t group = g_first + gi;
    const int64_t gcount = gt[2 * gr.num_groups + group];
    const int64_t start = gt[gr.num_groups + group];
    __syncthreads();
    load_group<kWords, kThreads>(sh, plan, gr.s_count, start, gcount, pi, pf);
    for (int s = 0; s < kWords * 32; ++s) {
      acc_t v = 0;
      if (s < gcount && has_col) {
        const int64_t r = b * gr.s_count + sh.slice[s];
        const float ws = weight_sum[r];
        if (ws > 0) v = static_cast<acc_t>(grad[r * gr.d + col]) / static_cast<acc_t>(ws);
      }
      gs[s * kThreads + threadIdx.x] = v;
    }
    for (int64_t e0 = lo; e0 < hi; e0 += kSub) {
      __syncthreads();
      membership<kWords, kThreads>(sh, tl, gcount, e0, hi, request_ts, ts.ids[t], ts.rows[t], wsum_unused, flag);
      __syncthreads();
      if (!has_col) continue;
      for (int u = 0; u < kSub; ++u) {
        const int64_t e = e0 + u;
        if (e >= hi) break;
        acc_t v = 0;
        bool any = false;
#pragma unroll
        for (int k = 0; k < kWords; ++k) {
          uint32_t bits = sh.mask[u][k];
          any |= bits != 0;
          while (bits) {
            const int s = k * 32 + __ffs(bits) - 1;
            bits &= bits - 1;
            v += static_cast<acc_t>(sh.w[u][s]) * gs[s * kThreads + threadIdx.x];
          }
        }
        if constexpr (kRows) {
          const int64_t i = e * gr.d + col;
          rows_out[i] = static_cast<scalar_t>(gi == 0 ? v : static_cast<acc_t>(rows_out[i]) + v);
        } else {
          if (any) atomicAdd(dense_out + sh.row[u] * gr.d + col, v);
        }
      }
    }
  }
}

// ---- slice_timeline: one warp per (slice, user), a count pass then an emit pass ----
template <bool kEmit>
__global__ void slice_timeline_kernel(Timeline tl, TableSet ts, const int64_t* __restrict__ pi,
                                      const double* __restrict__ pf, int64_t s_count, int64_t* __restrict__ lengths,
                                      const int64_t* __restrict__ starts, int64_t total, int64_t* __restrict__ values,
                                      float* __restrict__ weights, int32_t* flag) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t bcount = tl.num_users;
  if (warp >= s_count * bcount) return;
  const int64_t s = warp / bcount, b = warp % bcount;
  const SliceProg p = load_prog(pi, pf, s);
  if (p.table < 0 || p.table >= ts.num_tables) {
    if (lane == 0) {
      set_error(flag, kTableOutOfRange);
      if (!kEmit) lengths[warp] = 0;
    }
    return;
  }
  const int64_t* ids = ts.ids[p.table];
  const int64_t request_ts = tl.request_ts[b];
  int64_t lo, hi;
  user_range(tl, b, lo, hi);
  int64_t count = 0;
  const int64_t base_pos = kEmit ? starts[warp] : 0;
  for (int64_t base = lo; base < hi; base += 32) {
    const int64_t e = base + lane;
    float w = 0.f;
    bool keep = false;
    if (e < hi) keep = slice_keep(p, load_event(tl, e, request_ts), tl, e, w, flag);
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

// ---- validation of the event data on the device (the CPU kernels' data checks) ----
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
      const int64_t d = static_cast<int64_t>(static_cast<uint64_t>(r) - static_cast<uint64_t>(t));
      if (((r ^ t) & (r ^ d)) < 0) set_error(flag, kTsOverflow);
    }
  }
}

// ---- host side ----
struct Inputs {
  Timeline tl;
  at::Tensor offsets, ts, cats, floats, request_ts, prog_i, prog_f;
  std::vector<at::Tensor> ids;
  int64_t b, n, s;
};

using Rerun = std::function<void()>;

// Metadata checks with the CPU kernel's rules (its messages win through rerun), the program's checks on the
// host (skipped while capturing a graph: they need the program on the host), and the event data checks
// launched on the device (their bits are read with the op's other errors).
Inputs check_timeline(const char* op, const at::TensorList ids, const at::Tensor& offsets, const at::Tensor& ts,
                      const at::Tensor& cats, const at::Tensor& floats, const at::Tensor& request_ts,
                      const at::Tensor& prog_i, const at::Tensor& prog_f, const Rerun& rerun, int64_t num_tables,
                      const at::Tensor& flag) {
  for (const auto& [t, name] : {std::pair{&offsets, "offsets"}, {&cats, "cats"}, {&floats, "floats"},
                                {&request_ts, "request_ts"}, {&prog_i, "prog_i"}, {&prog_f, "prog_f"}}) {
    check_device(*t, op, name, ts, "ts");
  }
  for (size_t t = 0; t < ids.size(); ++t) check_device(ids[t], op, "ids", ts, "ts");
  const int64_t n = ts.numel();
  const int64_t b = offsets.numel() - 1;
  check_like_cpu([&] {
    DV365_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kLong, op, "offsets must be Long 1-D, got ",
                offsets.scalar_type(), " ", offsets.sizes());
    DV365_CHECK(ts.dim() == 1 && ts.scalar_type() == at::kLong, op, "ts must be Long 1-D, got ", ts.scalar_type());
    DV365_CHECK(request_ts.dim() == 1 && request_ts.scalar_type() == at::kLong, op, "request_ts must be Long 1-D");
    DV365_CHECK(offsets.numel() >= 1, op, "offsets must have B + 1 >= 1 entries");
    DV365_CHECK(request_ts.numel() == b, op, "request_ts must have shape [B=", b, "], got ", request_ts.sizes());
    DV365_CHECK(cats.dim() == 2 && cats.size(1) == n, op, "cats must have shape [C, N=", n, "], got ", cats.sizes());
    DV365_CHECK(at::isIntegralType(cats.scalar_type(), false), op, "cats must be an integer tensor (int8), got ",
                cats.scalar_type());
    DV365_CHECK(floats.scalar_type() == at::kFloat, op, "floats must be float32, got ", floats.scalar_type());
    DV365_CHECK(floats.dim() == 2 && floats.size(1) == n, op, "floats must have shape [F, N=", n, "], got ",
                floats.sizes());
    DV365_CHECK(prog_i.dim() == 2 && prog_i.size(1) == prog::kNumInt && prog_i.scalar_type() == at::kLong, op,
                "prog_i must be an int64 tensor of shape [S, ", int64_t(prog::kNumInt), "], got ",
                prog_i.scalar_type(), " ", prog_i.sizes());
    DV365_CHECK(prog_f.dim() == 2 && prog_f.size(0) == prog_i.size(0) && prog_f.size(1) == prog::kNumFloat &&
                    prog_f.scalar_type() == at::kDouble,
                op, "prog_f must be a float64 tensor of shape [S=", prog_i.size(0), ", ", int64_t(prog::kNumFloat),
                "], got ", prog_f.scalar_type(), " ", prog_f.sizes());
    DV365_CHECK(static_cast<int64_t>(ids.size()) == num_tables, op, "ids must hold one tensor per table (",
                num_tables, "), got ", ids.size());
    for (size_t t = 0; t < ids.size(); ++t) {
      DV365_CHECK(ids[t].scalar_type() == at::kLong && ids[t].dim() == 1 && ids[t].numel() == n, op, "ids[", t,
                  "] must be a 1-D int64 tensor of N=", n, " events, got ", ids[t].scalar_type(), " ",
                  ids[t].sizes());
    }
    DV365_CHECK(num_tables <= kMaxTables, op, "at most ", kMaxTables, " tables are supported on CUDA, got ",
                num_tables);
  }, rerun);
  Inputs in;
  in.b = b;
  in.n = n;
  in.s = prog_i.size(0);
  in.offsets = offsets.contiguous();
  in.ts = ts.contiguous();
  in.cats = cats.contiguous();
  in.floats = floats.contiguous();
  in.request_ts = request_ts.contiguous();
  in.prog_i = prog_i.contiguous();
  in.prog_f = prog_f.contiguous();
  for (const auto& i : ids) in.ids.push_back(i.contiguous());
  const int64_t num_floats = floats.size(0);
  if (!capturing() && in.s > 0) {
    const at::Tensor pi = in.prog_i.cpu();
    const int64_t* r = pi.data_ptr<int64_t>();
    bool ok = true;
    for (int64_t s = 0; s < in.s && ok; ++s, r += prog::kNumInt) {
      const int64_t flags = r[prog::kFlags];
      ok = r[prog::kTable] >= 0 && r[prog::kTable] < num_tables && flags >= 0 &&
           flags <= (prog::kWeighted | prog::kDwellFilter | prog::kRatioFilter) && (flags == 0 || num_floats >= 2);
      for (const int64_t col : {prog::kCatField0, prog::kCatField1, prog::kCatField2}) ok = ok && r[col] < cats.size(0);
    }
    if (!ok) {
      rerun();
      TORCH_CHECK(false, "dv365::", op, ": invalid slice program");
    }
  }
  in.tl.offsets = in.offsets.data_ptr<int64_t>();
  in.tl.num_users = b;
  in.tl.n = n;
  in.tl.ts = in.ts.data_ptr<int64_t>();
  in.tl.request_ts = in.request_ts.data_ptr<int64_t>();
  in.tl.cats = in.cats.data_ptr();
  in.tl.cat_fields = cats.size(0);
  in.tl.cat_bytes = static_cast<int>(cats.element_size());
  in.tl.floats = num_floats >= 2 ? in.floats.data_ptr() : nullptr;
  in.tl.float_bytes = num_floats >= 2 ? 4 : 0;
  check_offsets_async(in.offsets, n, flag);
  if (n > 0) {
    validate_timeline_kernel<<<static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 132 * 8)), 256, 0,
                               current_stream()>>>(in.tl, flag.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return in;
}

TableSet table_set(const Inputs& in) {
  TableSet s{};
  s.num_tables = static_cast<int64_t>(in.ids.size());
  for (int64_t t = 0; t < s.num_tables; ++t) s.ids[t] = in.ids[t].data_ptr<int64_t>();
  return s;
}

std::vector<at::Tensor> check_tables(const char* op, at::TensorList tables, const Inputs& in, TableSet& s,
                                     const Rerun& rerun) {
  for (size_t t = 0; t < tables.size(); ++t) check_device(tables[t], op, "tables", in.ts, "ts");
  check_like_cpu([&] {
    const auto dt = tables[0].scalar_type();
    DV365_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble, op,
                "tables must be float32, bfloat16, float16 or float64, got ", dt);
    for (size_t t = 0; t < tables.size(); ++t) {
      DV365_CHECK(tables[t].dim() == 2, op, "tables[", t, "] must be 2-D [rows, D], got ", tables[t].sizes());
      DV365_CHECK(tables[t].scalar_type() == dt, op, "tables must share one dtype: tables[0] is ", dt, ", tables[", t,
                  "] is ", tables[t].scalar_type());
      DV365_CHECK(tables[t].size(1) == tables[0].size(1), op, "tables must share D: tables[0] has ",
                  tables[0].size(1), ", tables[", t, "] has ", tables[t].size(1));
    }
  }, rerun);
  std::vector<at::Tensor> out;
  for (size_t t = 0; t < tables.size(); ++t) {
    const auto& tab = tables[t];
    out.push_back(tab.stride(1) == 1 ? tab : tab.contiguous());
    s.table[t] = out.back().data_ptr();
    s.rows[t] = tab.size(0);
    s.row_stride[t] = out.back().stride(0);
  }
  return out;
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

struct Plan {
  at::Tensor plan;
  Grid grid;
  int words;
  int threads;
};

// Builds the slice plan on the device (no host synchronization, so the forward can be captured in a graph).
Plan make_plan(const Inputs& in, int64_t t_count, int64_t d, int64_t acc_bytes, const at::Tensor& flag) {
  Plan p;
  const int64_t per_table = ceil_div(std::max<int64_t>(in.s, 1), t_count);
  p.words = static_cast<int>(std::clamp<int64_t>(ceil_div(per_table, 32), 1, 4));
  const int64_t g = p.words * 32;
  const int64_t ng = ceil_div(in.s, g) + t_count;
  p.plan = at::empty({in.s + 3 * ng + 2 * t_count}, in.ts.options());
  plan_kernel<<<1, 32, 0, current_stream()>>>(in.prog_i.data_ptr<int64_t>(), in.s, t_count, g, ng,
                                              p.plan.data_ptr<int64_t>(), flag.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // chunks per user: about kTarget events per CTA on average
  const int64_t target = env_int("DV365_SP_CHUNK", 2048);
  const int64_t avg = in.b ? ceil_div(in.n, in.b) : 0;
  p.grid.chunks = std::max<int64_t>(1, ceil_div(avg, target));
  // 128 threads: two D tiles for D = 256, so that three CTAs fit an SM and overlap membership with gathers
  p.threads = 128;
  p.grid.col_tiles = std::max<int64_t>(1, ceil_div(d, p.threads));
  p.grid.num_groups = ng;
  p.grid.s_count = in.s;
  p.grid.d = d;
  return p;
}

template <int kThreads, typename F>
void with_words(int words, F&& f) {
  using T = std::integral_constant<int, kThreads>;
  switch (words) {
    case 1: f(std::integral_constant<int, 1>{}, T{}); break;
    case 2: f(std::integral_constant<int, 2>{}, T{}); break;
    case 3: f(std::integral_constant<int, 3>{}, T{}); break;
    default: f(std::integral_constant<int, 4>{}, T{}); break;
  }
}

template <typename F>
void with_config(const Plan& p, F&& f) {
  with_words<128>(p.words, f);
}

template <typename K>
void set_smem(K kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

std::tuple<at::Tensor, at::Tensor> sliced_pool_cuda(at::TensorList tables, at::TensorList ids, const at::Tensor& offsets,
                                                    const at::Tensor& ts, const at::Tensor& cats,
                                                    const at::Tensor& floats, const at::Tensor& request_ts,
                                                    const at::Tensor& prog_i, const at::Tensor& prog_f, bool sparse) {
  constexpr const char* op = "sliced_pool";
  DV365_CHECK(!tables.empty(), op, "tables must hold at least one table");
  const c10::cuda::CUDAGuard guard(ts.device());
  const Rerun rerun = [&] {
    rerun_on_cpu<std::tuple<at::Tensor, at::Tensor>(at::TensorList, at::TensorList, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>(
        "dv365::sliced_pool", to_cpu(tables), to_cpu(ids), offsets.cpu(), ts.cpu(), cats.cpu(), floats.cpu(),
        request_ts.cpu(), prog_i.cpu(), prog_f.cpu(), sparse);
  };
  auto flag = new_error_flag(ts);
  Inputs in = check_timeline(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, rerun,
                             static_cast<int64_t>(tables.size()), flag);
  TableSet set = table_set(in);
  auto tabs = check_tables(op, tables, in, set, rerun);
  const int64_t d = tables[0].size(1);
  const auto dtype = tables[0].scalar_type();
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  auto pooled = at::empty({in.b, in.s, d}, tables[0].options());
  auto wsum = at::empty({in.b, in.s}, tables[0].options().dtype(at::kFloat));
  if (in.b == 0 || in.s == 0) {
    check_error_flag(flag, op, rerun);
    return {pooled, wsum};
  }
  auto num = at::zeros({in.b, in.s, d}, tables[0].options().dtype(acc_dtype));
  auto wacc = at::zeros({in.b, in.s}, tables[0].options().dtype(acc_dtype));
  Plan p = make_plan(in, static_cast<int64_t>(tables.size()), d, acc_dtype == at::kDouble ? 8 : 4, flag);
  auto stream = current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "sliced_pool_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    with_config(p, [&](auto words, auto threads) {
      constexpr int kWords = decltype(words)::value;
      constexpr int kThreads = decltype(threads)::value;
      const size_t smem = sizeof(Shared<kWords>) + sizeof(acc_t) * kWords * 32 * kThreads;
      auto kernel = sliced_pool_kernel<scalar_t, acc_t, kWords, kThreads>;
      set_smem(kernel, smem);
      const dim3 grid(static_cast<unsigned>(in.b * p.grid.chunks * p.grid.col_tiles),
                      static_cast<unsigned>(p.grid.num_groups));
      if (in.n > 0 && d > 0) {
        kernel<<<grid, kThreads, smem, stream>>>(in.tl, set, in.prog_i.data_ptr<int64_t>(),
                                                 in.prog_f.data_ptr<double>(), p.plan.data_ptr<int64_t>(), p.grid,
                                                 num.data_ptr<acc_t>(), wacc.data_ptr<acc_t>(),
                                                 flag.data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
    const int64_t total = std::max<int64_t>(in.b * in.s * d, in.b * in.s);
    sliced_pool_finalize_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned>(std::min<int64_t>(ceil_div(total, 256), 132 * 32)), 256, 0, stream>>>(
            num.data_ptr<acc_t>(), wacc.data_ptr<acc_t>(), in.b * in.s, d, pooled.data_ptr<scalar_t>(),
            wsum.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  check_error_flag(flag, op, rerun);
  return {pooled, wsum};
}

template <bool kRows>
std::vector<at::Tensor> backward_impl(const char* op, const at::Tensor& grad, const at::Tensor& weight_sum,
                                      at::TensorList ids, const at::Tensor& offsets, const at::Tensor& ts,
                                      const at::Tensor& cats, const at::Tensor& floats, const at::Tensor& request_ts,
                                      const at::Tensor& prog_i, const at::Tensor& prog_f,
                                      c10::ArrayRef<int64_t> num_rows) {
  const c10::cuda::CUDAGuard guard(ts.device());
  const Rerun rerun = [&] {
    if (kRows) {
      rerun_on_cpu<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, at::TensorList, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&)>(
          "dv365::sliced_pool_backward_rows", grad.cpu(), weight_sum.cpu(), to_cpu(ids), offsets.cpu(), ts.cpu(),
          cats.cpu(), floats.cpu(), request_ts.cpu(), prog_i.cpu(), prog_f.cpu());
    } else {
      std::vector<c10::SymInt> rows(num_rows.begin(), num_rows.end());
      rerun_on_cpu<std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, at::TensorList, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef)>(
          "dv365::sliced_pool_backward", grad.cpu(), weight_sum.cpu(), to_cpu(ids), offsets.cpu(), ts.cpu(),
          cats.cpu(), floats.cpu(), request_ts.cpu(), prog_i.cpu(), prog_f.cpu(), rows);
    }
  };
  check_device(grad, op, "grad", ts, "ts");
  check_device(weight_sum, op, "weight_sum", ts, "ts");
  auto flag = new_error_flag(ts);
  const int64_t t_count = static_cast<int64_t>(ids.size());
  Inputs in = check_timeline(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, rerun, t_count, flag);
  check_like_cpu([&] {
    const auto dt = grad.scalar_type();
    DV365_CHECK((dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble) && grad.dim() == 3 &&
                    grad.size(0) == in.b && grad.size(1) == in.s,
                op, "grad must be a floating point tensor of shape [B=", in.b, ", S=", in.s, ", D], got ", dt, " ",
                grad.sizes());
    DV365_CHECK(weight_sum.scalar_type() == at::kFloat && weight_sum.dim() == 2 && weight_sum.size(0) == in.b &&
                    weight_sum.size(1) == in.s,
                op, "weight_sum must be a float32 tensor of shape [B=", in.b, ", S=", in.s, "], got ",
                weight_sum.scalar_type(), " ", weight_sum.sizes());
    if (!kRows) {
      DV365_CHECK(static_cast<int64_t>(num_rows.size()) == t_count, op, "num_rows must hold one entry per table (",
                  t_count, "), got ", num_rows.size());
      for (const int64_t r : num_rows) DV365_CHECK(r >= 0, op, "num_rows must be >= 0, got ", r);
    }
  }, rerun);
  TableSet set = table_set(in);
  const int64_t d = grad.size(2);
  const auto dtype = grad.scalar_type();
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<at::Tensor> outs;
  for (int64_t t = 0; t < t_count; ++t) {
    if (kRows) {
      outs.push_back(at::empty({in.n, d}, grad.options()));
    } else {
      outs.push_back(at::zeros({num_rows[t], d}, grad.options().dtype(acc_dtype)));
      set.rows[t] = num_rows[t];
    }
    set.out[t] = outs.back().data_ptr();
  }
  if (kRows) {
    for (int64_t t = 0; t < t_count; ++t) set.rows[t] = std::numeric_limits<int64_t>::max();
  }
  if (in.b > 0 && in.n > 0 && d > 0) {
    Plan p = make_plan(in, t_count, d, acc_dtype == at::kDouble ? 8 : 4, flag);
    const at::Tensor g = grad.contiguous();
    const at::Tensor ws = weight_sum.contiguous();
    auto stream = current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "sliced_pool_backward_cuda", [&] {
      using acc_t = typename AccType<scalar_t>::type;
      with_config(p, [&](auto words, auto threads) {
        constexpr int kWords = decltype(words)::value;
        constexpr int kThreads = decltype(threads)::value;
        const size_t smem = sizeof(Shared<kWords>) + sizeof(acc_t) * kWords * 32 * kThreads;
        auto kernel = sliced_pool_backward_kernel<kRows, scalar_t, acc_t, kWords, kThreads>;
        set_smem(kernel, smem);
        const dim3 grid(static_cast<unsigned>(in.b * p.grid.chunks * p.grid.col_tiles),
                        static_cast<unsigned>(kRows ? t_count : p.grid.num_groups));
        kernel<<<grid, kThreads, smem, stream>>>(in.tl, set, in.prog_i.data_ptr<int64_t>(),
                                                 in.prog_f.data_ptr<double>(), p.plan.data_ptr<int64_t>(), p.grid,
                                                 g.data_ptr<scalar_t>(), ws.data_ptr<float>(),
                                                 flag.data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  } else if (kRows) {
    for (auto& o : outs) o.zero_();
  }
  check_error_flag(flag, op, rerun);
  if (!kRows) {
    for (auto& o : outs) {
      if (o.scalar_type() != dtype) o = o.to(dtype);
    }
  }
  return outs;
}

std::vector<at::Tensor> sliced_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& weight_sum,
                                                  at::TensorList ids, const at::Tensor& offsets, const at::Tensor& ts,
                                                  const at::Tensor& cats, const at::Tensor& floats,
                                                  const at::Tensor& request_ts, const at::Tensor& prog_i,
                                                  const at::Tensor& prog_f, c10::SymIntArrayRef num_rows) {
  std::vector<int64_t> rows;
  for (const auto& r : num_rows) rows.push_back(r.expect_int());
  return backward_impl<false>("sliced_pool_backward", grad, weight_sum, ids, offsets, ts, cats, floats, request_ts,
                              prog_i, prog_f, rows);
}

std::vector<at::Tensor> sliced_pool_backward_rows_cuda(const at::Tensor& grad, const at::Tensor& weight_sum,
                                                       at::TensorList ids, const at::Tensor& offsets,
                                                       const at::Tensor& ts, const at::Tensor& cats,
                                                       const at::Tensor& floats, const at::Tensor& request_ts,
                                                       const at::Tensor& prog_i, const at::Tensor& prog_f) {
  return backward_impl<true>("sliced_pool_backward_rows", grad, weight_sum, ids, offsets, ts, cats, floats,
                             request_ts, prog_i, prog_f, {});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> slice_timeline_cuda(at::TensorList ids, const at::Tensor& offsets,
                                                                   const at::Tensor& ts, const at::Tensor& cats,
                                                                   const at::Tensor& floats,
                                                                   const at::Tensor& request_ts,
                                                                   const at::Tensor& prog_i, const at::Tensor& prog_f) {
  constexpr const char* op = "slice_timeline";
  const c10::cuda::CUDAGuard guard(ts.device());
  const Rerun rerun = [&] {
    rerun_on_cpu<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
        at::TensorList, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&)>("dv365::slice_timeline", to_cpu(ids), offsets.cpu(), ts.cpu(),
                                               cats.cpu(), floats.cpu(), request_ts.cpu(), prog_i.cpu(), prog_f.cpu());
  };
  auto flag = new_error_flag(ts);
  Inputs in = check_timeline(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, rerun,
                             static_cast<int64_t>(ids.size()), flag);
  TableSet set = table_set(in);
  auto lengths = at::zeros({in.s * in.b}, ts.options());
  auto stream = current_stream();
  const int64_t warps = in.s * in.b;
  const unsigned blocks = static_cast<unsigned>(ceil_div(warps * 32, 256));
  if (warps > 0) {
    slice_timeline_kernel<false><<<blocks, 256, 0, stream>>>(in.tl, set, in.prog_i.data_ptr<int64_t>(),
                                                             in.prog_f.data_ptr<double>(), in.s,
                                                             lengths.data_ptr<int64_t>(), nullptr, 0, nullptr,
                                                             nullptr, flag.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // the output size depends on the data: one synchronization here (so this op cannot be graph-captured)
  check_error_flag(flag, op, rerun);
  auto ends = at::cumsum(lengths, 0);
  const int64_t total = warps ? ends.select(0, -1).item<int64_t>() : 0;
  auto values = at::empty({total}, ts.options());
  auto weights = at::empty({total}, ts.options().dtype(at::kFloat));
  if (total > 0) {
    auto starts = at::sub(ends, lengths);
    slice_timeline_kernel<true><<<blocks, 256, 0, stream>>>(in.tl, set, in.prog_i.data_ptr<int64_t>(),
                                                            in.prog_f.data_ptr<double>(), in.s, nullptr,
                                                            starts.data_ptr<int64_t>(), total,
                                                            values.data_ptr<int64_t>(), weights.data_ptr<float>(),
                                                            flag.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {values, weights, lengths};
}

}  // namespace
}  // namespace dv365::cuda

TORCH_LIBRARY_IMPL(dv365, CUDA, m) {
  m.impl("slice_timeline", &dv365::cuda::slice_timeline_cuda);
  m.impl("sliced_pool", &dv365::cuda::sliced_pool_cuda);
  m.impl("sliced_pool_backward", &dv365::cuda::sliced_pool_backward_cuda);
  m.impl("sliced_pool_backward_rows", &dv365::cuda::sliced_pool_backward_rows_cuda);
}
