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
#include "cpu_dispatch.h"

namespace dv365 {
namespace {

constexpr const char* kFwd = "jagged_mean_pool";
constexpr const char* kBwd = "jagged_mean_pool_backward";
constexpr const char* kRows = "jagged_mean_pool_backward_rows";
// rows gathered ahead of use; enough to cover DRAM latency at ~4 rows per 100 ns per core
constexpr int64_t kPrefetch = 12;

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

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

#define DV365_ISA_KERNELS "jagged_pool_kernels.inc"
#include "cpu_isa_copies.inc"

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
    parallel_ranges(n, [&](int64_t c) {
      A* base = partial.data() + c * 3 * D;
      DV365_ISA_CALL(fwd_range<scalar_t>(a, bounds[c], bounds[c + 1], base + 2 * D, base, base + D));
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
      DV365_ISA_CALL(bwd_rows<scalar_t, A>(j, g, grad.stride(0), s, dst, D, r0, r1));
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
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const A* s = p.scale.const_data_ptr<A>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    parallel_ranges(n, [&](int64_t c) {
      DV365_ISA_CALL(rows_range<scalar_t, A>(p.j, g, grad.stride(0), s, o, D, bounds[c], bounds[c + 1]));
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
