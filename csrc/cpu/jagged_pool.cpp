// Jagged weighted mean pooling on the CPU (semantics: dv365_ops/reference.py::jagged_mean_pool).
//
// The forward and the per-event-row backward split the N events (not the M bags) into equal ranges, a few
// per thread, so a batch of four 70,000-event bags keeps every core busy as well as 4096 bags of 1-50
// events do; the dense backward splits the table's rows, so no two threads add into the same row. Per-bag scales
// w_i / sum(w) are computed first, so a bag cut by a range boundary only needs its partial sums added.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "../dv365.h"
#include "checks/jagged.h"

namespace dv365 {
namespace {

constexpr const char* kFwd = "jagged_mean_pool";
constexpr const char* kBwd = "jagged_mean_pool_backward";
constexpr const char* kRows = "jagged_mean_pool_backward_rows";
// rows gathered ahead of use; enough to cover DRAM latency at ~4 rows per 100 ns per core
constexpr int64_t kPrefetch = 12;

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Conversions the compiler can vectorize (c10's bf16 -> float goes through a union per element).
template <typename T, typename A>
__attribute__((always_inline)) inline A load(const T* p, int64_t d) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    uint16_t bits;
    std::memcpy(&bits, reinterpret_cast<const uint16_t*>(p) + d, 2);
    uint32_t wide = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &wide, 4);
    return f;
  } else {
    return static_cast<A>(p[d]);
  }
}

__attribute__((always_inline)) inline void prefetch_row(const char* row, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, 0, 0);
}

// Columns pooled per pass over a bag: 64 float accumulators take 8 of the 16 AVX2 registers,
// so a block's sum never touches memory until the bag ends.
constexpr int64_t kBlock = 64;

// dst[0:D] = sum_{i in [lo, hi)} scale_i * table[ids_i, 0:D], prefetching the rows kPrefetch events ahead
// (up to pf_end, the end of the thread's range).
template <typename T, typename A>
__attribute__((always_inline)) inline void pool_events(A* __restrict__ dst, const T* __restrict__ table,
                                                       int64_t row_stride, const int64_t* __restrict__ ids,
                                                       const A* __restrict__ scale, int64_t lo, int64_t hi,
                                                       int64_t pf_end, int64_t D) {
  for (int64_t c0 = 0; c0 < D; c0 += kBlock) {
    const T* __restrict__ base = table + c0;
    const int64_t width = std::min(kBlock, D - c0);
    const int64_t bytes = width * static_cast<int64_t>(sizeof(T));
    const int64_t pf_stop = std::min(hi + kPrefetch, pf_end);
    for (int64_t i = lo; i < std::min(lo + kPrefetch, pf_stop); ++i) {
      prefetch_row(reinterpret_cast<const char*>(base + ids[i] * row_stride), bytes);
    }
    if (width == kBlock) {
      A acc[kBlock] = {};
      for (int64_t i = lo; i < hi; ++i) {
        if (i + kPrefetch < pf_stop) {
          prefetch_row(reinterpret_cast<const char*>(base + ids[i + kPrefetch] * row_stride), bytes);
        }
        const T* __restrict__ row = base + ids[i] * row_stride;
        const A s = scale[i];
        for (int64_t d = 0; d < kBlock; ++d) acc[d] += s * load<T, A>(row, d);
      }
      for (int64_t d = 0; d < kBlock; ++d) dst[c0 + d] = acc[d];
    } else {
      A* __restrict__ acc = dst + c0;
      for (int64_t d = 0; d < width; ++d) acc[d] = A(0);
      for (int64_t i = lo; i < hi; ++i) {
        if (i + kPrefetch < pf_stop) {
          prefetch_row(reinterpret_cast<const char*>(base + ids[i + kPrefetch] * row_stride), bytes);
        }
        const T* __restrict__ row = base + ids[i] * row_stride;
        const A s = scale[i];
        for (int64_t d = 0; d < width; ++d) acc[d] += s * load<T, A>(row, d);
      }
    }
  }
}

struct Jagged {
  const int64_t* ids;
  const int64_t* offsets;
  int64_t M;  // bags
  int64_t N;  // events
};

// Events [e0, e1) of the pooled sum: out[b] += scale_i * table[ids_i]. Bags wholly inside the range are
// finished here; the parts of the (at most two) cut bags go to head/tail.
template <typename T>
struct FwdArgs {
  Jagged j;
  const T* table;
  int64_t row_stride;
  int64_t D;
  const acc_t<T>* scale;  // per event: w_i / sum(w) of its bag (0 for a zero-sum bag)
  T* out;
};

template <typename T>
__attribute__((always_inline)) inline void fwd_range_impl(
    const FwdArgs<T>& a, int64_t e0, int64_t e1, acc_t<T>* __restrict__ acc, acc_t<T>* __restrict__ head,
    acc_t<T>* __restrict__ tail) {
  using A = acc_t<T>;
  const int64_t D = a.D;
  const int64_t* off = a.j.offsets;
  // first bag that starts at or after e0; the events before its start belong to a bag cut at e0
  int64_t b = std::lower_bound(off, off + a.j.M + 1, e0) - off;
  const int64_t head_end = b <= a.j.M ? std::min(off[b], e1) : e1;
  pool_events<T, A>(head, a.table, a.row_stride, a.j.ids, a.scale, e0, head_end, e1, D);
  // bags starting in [e0, e1); an empty bag at position N belongs to the last range
  const bool last = e1 == a.j.N;
  for (; b < a.j.M && (off[b] < e1 || (last && off[b] == e1)); ++b) {
    const int64_t hi = off[b + 1];
    if (hi > e1) {
      pool_events<T, A>(tail, a.table, a.row_stride, a.j.ids, a.scale, off[b], e1, e1, D);
      break;
    }
    pool_events<T, A>(acc, a.table, a.row_stride, a.j.ids, a.scale, off[b], hi, e1, D);
    T* o = a.out + b * D;
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(acc[d]);
  }
}

template <typename T>
__attribute__((target("avx2,fma,f16c"))) void fwd_range_avx2(
    const FwdArgs<T>& a, int64_t e0, int64_t e1, acc_t<T>* acc, acc_t<T>* head, acc_t<T>* tail) {
  fwd_range_impl<T>(a, e0, e1, acc, head, tail);
}

template <typename T>
void fwd_range_base(const FwdArgs<T>& a, int64_t e0, int64_t e1, acc_t<T>* acc, acc_t<T>* head, acc_t<T>* tail) {
  fwd_range_impl<T>(a, e0, e1, acc, head, tail);
}

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return yes;
}

// Ranges per thread: the machine is shared, so threads take ranges from a queue rather than one each, and a
// thread slowed by a neighbour takes fewer.
constexpr int64_t kRangesPerThread = 4;

// Equal event ranges, none smaller than kMinWork gathered elements (small batches stay on one thread).
std::vector<int64_t> event_ranges(int64_t N, int64_t D) {
  constexpr int64_t kMinWork = 1 << 15;
  const int64_t by_work = std::max<int64_t>(1, N * std::max<int64_t>(D, 1) / kMinWork);
  const int64_t most = at::get_num_threads() > 1 ? at::get_num_threads() * kRangesPerThread : 1;
  const int64_t n = std::max<int64_t>(1, std::min({most, by_work, N}));
  std::vector<int64_t> bounds(n + 1);
  for (int64_t c = 0; c <= n; ++c) bounds[c] = N * c / n;
  return bounds;
}

// fn(c) for c in [0, n), spread over the threads through a shared counter.
template <typename F>
void parallel_ranges(int64_t n, const F& fn) {
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  if (workers <= 1) {
    for (int64_t c = 0; c < n; ++c) fn(c);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < n; c = next.fetch_add(1)) fn(c);
  });
}


// The index of the first element of [0, n) for which bad(i) holds, or -1: the message names the first offender,
// as the CUDA kernels' error record does, however the work was split.
template <typename F>
int64_t first_where(int64_t n, const F& bad) {
  std::atomic<int64_t> first{n};
  at::parallel_for(0, n, 1 << 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      if (bad(i)) {
        int64_t cur = first.load(std::memory_order_relaxed);
        while (i < cur && !first.compare_exchange_weak(cur, i)) {
        }
        return;
      }
    }
  });
  const int64_t i = first.load();
  return i < n ? i : -1;
}

// offsets: 0 = offsets[0] <= ... <= offsets[M] = N.
void check_offsets(const char* op, const int64_t* off, int64_t M, int64_t N) {
  checks::jagged::offsets_ends(op, off[0], off[M], N);
  for (int64_t b = 0; b < M; ++b) {
    checks::jagged::offsets_step(op, b, off[b], off[b + 1]);
  }
}

void check_ids(const char* op, const int64_t* ids, int64_t N, int64_t R) {
  const int64_t bad = first_where(N, [&](int64_t i) { return static_cast<uint64_t>(ids[i]) >= static_cast<uint64_t>(R); });
  if (bad >= 0) checks::jagged::id_in_range(op, bad, ids[bad], R);
}

// Per-event scale w_i / sum_bag(w) in the accumulation dtype (1 / count without weights), after checking
// that every weight is finite and non-negative.
template <typename A>
at::Tensor event_scales(const char* op, const Jagged& j, const std::optional<at::Tensor>& weights,
                        at::ScalarType acc_type) {
  at::Tensor scale = at::empty({j.N}, at::TensorOptions().dtype(acc_type));
  A* s = scale.data_ptr<A>();
  at::Tensor w_acc;
  const A* w = nullptr;
  if (weights.has_value()) {
    w_acc = weights->to(acc_type).contiguous();
    w = w_acc.data_ptr<A>();
    const int64_t bad = first_where(j.N, [&](int64_t i) { return !(w[i] >= A(0) && std::isfinite(w[i])); });
    if (bad >= 0) checks::jagged::weight_ok(op, bad, static_cast<double>(w[bad]));
  }
  const int64_t* off = j.offsets;
  at::parallel_for(0, j.M, 256, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = off[b], hi = off[b + 1];
      if (w == nullptr) {
        const A inv = hi > lo ? A(1) / A(hi - lo) : A(0);
        std::fill(s + lo, s + hi, inv);
        continue;
      }
      A sum = 0;
      for (int64_t i = lo; i < hi; ++i) sum += w[i];
      // a zero-sum bag pools to zeros: every scale is 0
      const A inv = sum > A(0) ? A(1) / sum : A(0);
      for (int64_t i = lo; i < hi; ++i) s[i] = w[i] * inv;
    }
  });
  return scale;
}

struct Prepared {
  at::Tensor ids, offsets, scale;
  Jagged j;
};

Prepared prepare(const char* op, const at::Tensor& ids_in, const at::Tensor& offsets_in,
                 const std::optional<at::Tensor>& weights, int64_t R, at::ScalarType dense_type) {
  Prepared p;
  p.ids = ids_in.contiguous();
  p.offsets = offsets_in.contiguous();
  p.j = Jagged{p.ids.data_ptr<int64_t>(), p.offsets.data_ptr<int64_t>(), p.offsets.numel() - 1, p.ids.numel()};
  check_offsets(op, p.j.offsets, p.j.M, p.j.N);
  if (R >= 0) check_ids(op, p.j.ids, p.j.N, R);
  if (dense_type == at::kDouble) {
    p.scale = event_scales<double>(op, p.j, weights, at::kDouble);
  } else {
    p.scale = event_scales<float>(op, p.j, weights, at::kFloat);
  }
  return p;
}

#define DV365_DISPATCH_POOL_TYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)


at::Tensor jagged_mean_pool_cpu(const at::Tensor& table_in, const at::Tensor& ids, const at::Tensor& offsets,
                                const std::optional<at::Tensor>& weights, bool sparse) {
  checks::jagged::args(kFwd, ids, offsets, weights, table_in, "table");
  // rows may be strided (a column slice of a wider table); only a strided D axis needs a copy
  const at::Tensor table = table_in.stride(1) == 1 ? table_in : table_in.contiguous();
  const int64_t R = table.size(0), D = table.size(1);
  Prepared p = prepare(kFwd, ids, offsets, weights, R, table.scalar_type());
  at::Tensor out = at::empty({p.j.M, D}, table.options());
  if (p.j.M == 0 || D == 0) return out;

  DV365_DISPATCH_POOL_TYPES(table.scalar_type(), kFwd, [&] {
    using A = acc_t<scalar_t>;
    FwdArgs<scalar_t> a{p.j, table.const_data_ptr<scalar_t>(), table.stride(0), D, p.scale.const_data_ptr<A>(),
                        out.mutable_data_ptr<scalar_t>()};
    const std::vector<int64_t> bounds = event_ranges(p.j.N, D);
    const int64_t n = static_cast<int64_t>(bounds.size()) - 1;
    // per range: head partial, tail partial, and a scratch row for whole bags
    std::vector<A> partial(static_cast<size_t>(n * 3 * D));
    const bool avx2 = has_avx2();
    parallel_ranges(n, [&](int64_t c) {
      A* base = partial.data() + c * 3 * D;
      if (avx2) {
        fwd_range_avx2<scalar_t>(a, bounds[c], bounds[c + 1], base + 2 * D, base, base + D);
      } else {
        fwd_range_base<scalar_t>(a, bounds[c], bounds[c + 1], base + 2 * D, base, base + D);
      }
    });
    // Finish every bag cut by a range boundary: its tail in the range it starts in plus the heads of the
    // following ranges it covers. Cut bags are at most n - 1, so this stays serial.
    const int64_t* off = p.j.offsets;
    for (int64_t c = 0; c + 1 < n; ++c) {
      const int64_t e1 = bounds[c + 1];
      // the bag holding event e1 - 1: cut here if it started in range c and goes on past e1
      const int64_t b = std::upper_bound(off, off + p.j.M + 1, e1 - 1) - off - 1;
      if (b < 0 || b >= p.j.M || off[b] < bounds[c] || off[b + 1] <= e1 || off[b] >= e1) continue;
      std::vector<A> sum(partial.begin() + (c * 3 + 1) * D, partial.begin() + (c * 3 + 2) * D);
      for (int64_t k = c + 1; k < n && bounds[k] < off[b + 1]; ++k) {
        const A* head = partial.data() + k * 3 * D;
        for (int64_t d = 0; d < D; ++d) sum[d] += head[d];
      }
      scalar_t* o = a.out + b * D;
      for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(sum[d]);
    }
  });
  return out;
}


// grad_table[ids_i] += scale_i * grad[bag(i)] for the events whose row lies in [r0, r1): one task per row
// range, so no two threads write the same row.
template <typename T, typename A>
__attribute__((always_inline)) inline void bwd_rows_impl(const Jagged& j, const T* __restrict__ grad,
                                                          int64_t grad_stride, const A* __restrict__ scale,
                                                          A* __restrict__ dst, int64_t D, int64_t r0, int64_t r1) {
  const int64_t* __restrict__ ids = j.ids;
  const int64_t* off = j.offsets;
  for (int64_t b = 0; b < j.M; ++b) {
    const T* g = grad + b * grad_stride;
    for (int64_t i = off[b]; i < off[b + 1]; ++i) {
      const int64_t r = ids[i];
      if (r < r0 || r >= r1) continue;
      A* __restrict__ row = dst + r * D;
      const A s = scale[i];
      for (int64_t d = 0; d < D; ++d) row[d] += s * load<T, A>(g, d);
    }
  }
}

template <typename T, typename A>
__attribute__((target("avx2,fma,f16c"))) void bwd_rows_avx2(const Jagged& j, const T* grad, int64_t gs,
                                                             const A* scale, A* dst, int64_t D, int64_t r0,
                                                             int64_t r1) {
  bwd_rows_impl<T, A>(j, grad, gs, scale, dst, D, r0, r1);
}

template <typename T, typename A>
void bwd_rows_base(const Jagged& j, const T* grad, int64_t gs, const A* scale, A* dst, int64_t D, int64_t r0,
                   int64_t r1) {
  bwd_rows_impl<T, A>(j, grad, gs, scale, dst, D, r0, r1);
}

at::Tensor jagged_mean_pool_backward_cpu(const at::Tensor& grad_in, const at::Tensor& ids, const at::Tensor& offsets,
                                         const std::optional<at::Tensor>& weights, c10::SymInt num_rows_sym) {
  const int64_t R = num_rows_sym.expect_int();
  checks::jagged::backward_args(kBwd, grad_in, ids, offsets, weights, R);
  const at::Tensor grad = grad_in.stride(1) == 1 ? grad_in : grad_in.contiguous();
  const int64_t D = grad.size(1);
  Prepared p = prepare(kBwd, ids, offsets, weights, R, grad.scalar_type());
  at::Tensor out = at::zeros({R, D}, grad.options());
  if (p.j.N == 0 || D == 0) return out;

  DV365_DISPATCH_POOL_TYPES(grad.scalar_type(), kBwd, [&] {
    using A = acc_t<scalar_t>;
    const bool avx2 = has_avx2();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const A* s = p.scale.const_data_ptr<A>();
    // Rows of the accumulation buffer: the table's rows for float32 / float64 (accumulated in place); for
    // bf16 / fp16 a float32 buffer with one row per distinct id, so the [R, D] float32 copy is never made.
    const int64_t* rows = p.j.ids;
    int64_t num_acc_rows = R;
    at::Tensor acc = out;
    std::vector<int64_t> slot_of_event, row_of_slot;
    if constexpr (!std::is_same_v<A, scalar_t>) {
      std::vector<int64_t> slot_of_row(static_cast<size_t>(R), -1);
      slot_of_event.resize(static_cast<size_t>(p.j.N));
      for (int64_t i = 0; i < p.j.N; ++i) {
        int64_t& slot = slot_of_row[p.j.ids[i]];
        if (slot < 0) {
          slot = static_cast<int64_t>(row_of_slot.size());
          row_of_slot.push_back(p.j.ids[i]);
        }
        slot_of_event[i] = slot;
      }
      rows = slot_of_event.data();
      num_acc_rows = static_cast<int64_t>(row_of_slot.size());
      acc = at::zeros({num_acc_rows, D}, grad.options().dtype(at::kFloat));
    }
    A* dst = acc.mutable_data_ptr<A>();
    const Jagged j{rows, p.j.offsets, p.j.M, p.j.N};
    // every range reads all ids, so ranges are few and not smaller than 2^14 events' worth of rows
    const int64_t by_work = std::max<int64_t>(1, p.j.N * D >> 14);
    const int64_t most = at::get_num_threads() > 1 ? at::get_num_threads() * kRangesPerThread : 1;
    const int64_t n = std::max<int64_t>(1, std::min({most, by_work, num_acc_rows}));
    parallel_ranges(n, [&](int64_t c) {
      const int64_t r0 = num_acc_rows * c / n, r1 = num_acc_rows * (c + 1) / n;
      if (avx2) {
        bwd_rows_avx2<scalar_t, A>(j, g, grad.stride(0), s, dst, D, r0, r1);
      } else {
        bwd_rows_base<scalar_t, A>(j, g, grad.stride(0), s, dst, D, r0, r1);
      }
    });
    if constexpr (!std::is_same_v<A, scalar_t>) {
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, num_acc_rows, 1024, [&](int64_t u0, int64_t u1) {
        for (int64_t u = u0; u < u1; ++u) {
          scalar_t* __restrict__ orow = o + row_of_slot[u] * D;
          const A* __restrict__ arow = dst + u * D;
          for (int64_t d = 0; d < D; ++d) orow[d] = static_cast<scalar_t>(arow[d]);
        }
      });
    }
  });
  return out;
}

// rows[i] = scale_i * grad[bag(i)], over events [e0, e1).
template <typename T, typename A>
__attribute__((always_inline)) inline void rows_range_impl(const Jagged& j, const T* __restrict__ grad,
                                                            int64_t grad_stride, const A* __restrict__ scale,
                                                            T* __restrict__ out, int64_t D, int64_t e0, int64_t e1) {
  const int64_t* off = j.offsets;
  int64_t b = std::upper_bound(off, off + j.M + 1, e0) - off - 1;
  for (int64_t i = e0; i < e1; ++i) {
    while (off[b + 1] <= i) ++b;
    const T* g = grad + b * grad_stride;
    T* o = out + i * D;
    const A s = scale[i];
    for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(s * load<T, A>(g, d));
  }
}

template <typename T, typename A>
__attribute__((target("avx2,fma,f16c"))) void rows_range_avx2(const Jagged& j, const T* grad, int64_t gs,
                                                               const A* scale, T* out, int64_t D, int64_t e0,
                                                               int64_t e1) {
  rows_range_impl<T, A>(j, grad, gs, scale, out, D, e0, e1);
}

template <typename T, typename A>
void rows_range_base(const Jagged& j, const T* grad, int64_t gs, const A* scale, T* out, int64_t D, int64_t e0,
                     int64_t e1) {
  rows_range_impl<T, A>(j, grad, gs, scale, out, D, e0, e1);
}

at::Tensor jagged_mean_pool_backward_rows_cpu(const at::Tensor& grad_in, const at::Tensor& ids,
                                              const at::Tensor& offsets, const std::optional<at::Tensor>& weights) {
  checks::jagged::backward_args(kRows, grad_in, ids, offsets, weights, std::nullopt);
  const at::Tensor grad = grad_in.stride(1) == 1 ? grad_in : grad_in.contiguous();
  const int64_t D = grad.size(1);
  // the rows are indexed by event, so ids are not checked against a table here
  Prepared p = prepare(kRows, ids, offsets, weights, -1, grad.scalar_type());
  at::Tensor out = at::empty({p.j.N, D}, grad.options());
  if (p.j.N == 0 || D == 0) return out;
  DV365_DISPATCH_POOL_TYPES(grad.scalar_type(), kRows, [&] {
    using A = acc_t<scalar_t>;
    const std::vector<int64_t> bounds = event_ranges(p.j.N, D);
    const int64_t n = static_cast<int64_t>(bounds.size()) - 1;
    const bool avx2 = has_avx2();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const A* s = p.scale.const_data_ptr<A>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    parallel_ranges(n, [&](int64_t c) {
      if (avx2) {
        rows_range_avx2<scalar_t, A>(p.j, g, grad.stride(0), s, o, D, bounds[c], bounds[c + 1]);
      } else {
        rows_range_base<scalar_t, A>(p.j, g, grad.stride(0), s, o, D, bounds[c], bounds[c + 1]);
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace dv365

TORCH_LIBRARY_IMPL(dv365, CPU, m) {
  m.impl("jagged_mean_pool", &dv365::jagged_mean_pool_cpu);
  m.impl("jagged_mean_pool_backward", &dv365::jagged_mean_pool_backward_cpu);
  m.impl("jagged_mean_pool_backward_rows", &dv365::jagged_mean_pool_backward_rows_cpu);
}
