// CPU kernels of the multi-slicing ops (paper eq. 2-6; semantics: dv365_ops/reference.py, program layout:
// dv365_ops/program.py): slice_timeline, the fused sliced_pool and its two backward ops.
//
// How the program is evaluated. Its plan (csrc/slice_plan.h, the one builder every backend uses, cached per
// program) groups the slices that differ only in their time window (same table, categorical filters, float
// filters and weight). Per event, the categorical filters of all groups are a few 64-bit ANDs of the plan's
// "groups accepting value v of field f" bitsets, and the float predicates run only for groups still alive.
// Windows are contiguous event ranges of a user's ascending timeline (binary search), so a user's events split
// into segments that lie wholly inside or outside every window; per segment each group accumulates once and
// hands its sum to its slices at the segment end.
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
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "checks/slicing.h"
#include "dv365.h"
#include "cpu_dispatch.h"
#include "slice_plan_cache.h"

namespace dv365 {
namespace {

using plan::Group;

// A program as the kernels read it: its plan (slice_plan.h, cached per program) and what the CPU loops derive.
struct Program {
  std::shared_ptr<plan::CachedPlan> entry;  // keeps the plan alive
  const plan::SlicePlan* pl = nullptr;
  int64_t S = 0, G = 0, W = 1;
  std::vector<int64_t> gtable;       // [G]: each group's table
  std::vector<int64_t> used_tables;  // tables some slice pools, ascending
  bool has_float_groups = false;
};

struct Timeline {
  int64_t B = 0, N = 0, C = 0;
  const int64_t* offsets = nullptr;
  const int64_t* ts = nullptr;
  const int64_t* request_ts = nullptr;
  const uint8_t* cats = nullptr;  // [C, N]
  const float* dur = nullptr;     // null without float fields
  const float* dwell = nullptr;
  std::vector<const int64_t*> ids;
  std::vector<at::Tensor> holders;  // keeps contiguous copies alive
};

template <typename scalar_t>
struct TableView {
  std::vector<const scalar_t*> ptr;
  std::vector<int64_t> row_stride;
  int64_t D = 0;
};

struct EvalScratch {
  std::vector<uint64_t> pass;
  std::vector<float> weight;
  std::vector<double> ratio, denom;
  std::vector<int64_t> ratio_at, denom_at;
  std::vector<char> ratio_exact;  // ratio[k] is dwell / pow(dur, beta) itself, not its sqrt stand-in
  explicit EvalScratch(const Program& p)
      : pass(p.W), weight(p.G, 1.0f), ratio(p.pl->betas.size()), denom(p.pl->gammas.size()),
        ratio_at(p.pl->betas.size(), -1), denom_at(p.pl->gammas.size(), -1), ratio_exact(p.pl->betas.size(), 0) {}
};

template <typename acc_t>
struct PoolScratch {
  std::vector<acc_t> gacc, rowbuf;
  std::vector<double> gw;
  std::vector<uint64_t> touched;
  PoolScratch(const Program& p, int64_t D) : gacc(p.G * D), rowbuf(D), gw(p.G), touched(p.W) {}
};

// A user's event range [lo, hi) split at every window boundary; segment k = [bounds[k], bounds[k+1]).
struct Segments {
  std::vector<int64_t> bounds;
  std::vector<uint64_t> active;  // [segments][W]: groups with a slice whose window covers the segment
  std::vector<char> any_active;
  std::vector<int64_t> gs_off;  // [segments][G + 1] into gs: those slices, by group
  std::vector<int64_t> gs;
  std::vector<int64_t> win_a, win_z;
};

struct Task {
  int64_t b, lo, hi, slot;  // slot >= 0: a part of a split user, accumulated into partial `slot`
};

// the per-task loops, one copy per ISA (csrc/cpu/cpu_dispatch.h); DV365_ISA_CALL picks one
#define DV365_ISA_KERNELS "slicing_kernels.inc"
#include "cpu_isa_copies.inc"

// The program's plan for a timeline with T tables, C categorical and F float rows (its shapes and entries checked
// by plan_of; its device, ts's, by checks::timeline).
Program compile_program(const char* op, const at::Tensor& prog_i, const at::Tensor& prog_f, int64_t T, int64_t C,
                        int64_t F) {
  Program p;
  p.entry = plan::plan_of(op, prog_i, prog_f, T, C, F);
  p.pl = &p.entry->plan;
  p.S = p.pl->S;
  p.G = p.pl->G;
  p.W = p.pl->W;
  for (const Group& q : p.pl->groups) {
    p.gtable.push_back(q.table);
    if (p.used_tables.empty() || p.used_tables.back() != q.table) p.used_tables.push_back(q.table);
    p.has_float_groups |= q.flags != 0;
  }
  return p;
}

// Validates the timeline arguments shared by every slicing op: the metadata (checks/slicing.h), then the data.
Timeline check_timeline(const char* op, at::TensorList ids, const at::Tensor& offsets_in, const at::Tensor& ts_in,
                        const at::Tensor& cats_in, const at::Tensor& floats_in, const at::Tensor& request_ts_in,
                        const at::Tensor& prog_i, const at::Tensor& prog_f) {
  checks::timeline(op, ids, offsets_in, ts_in, cats_in, floats_in, request_ts_in, prog_i, prog_f);
  Timeline tl;
  const at::Tensor offsets = offsets_in.contiguous(), ts = ts_in.contiguous(), request_ts = request_ts_in.contiguous();
  tl.B = offsets.numel() - 1;
  tl.N = ts.numel();
  tl.offsets = offsets.data_ptr<int64_t>();
  tl.ts = ts.data_ptr<int64_t>();
  tl.request_ts = request_ts.data_ptr<int64_t>();
  DV365_CHECK(tl.offsets[0] == 0 && tl.offsets[tl.B] == tl.N, op, "offsets must start at 0 and end at N=", tl.N,
              " (ts.numel()), got ", tl.offsets[0], " .. ", tl.offsets[tl.B]);
  for (int64_t b = 0; b < tl.B; ++b)
    DV365_CHECK(tl.offsets[b] <= tl.offsets[b + 1], op, "offsets must be non-decreasing (user ", b, ")");
  for (int64_t b = 0; b < tl.B; ++b) {
    const int64_t lo = tl.offsets[b], hi = tl.offsets[b + 1];
    for (int64_t e = lo + 1; e < hi; ++e)
      DV365_CHECK(tl.ts[e - 1] <= tl.ts[e], op, "ts must be ascending within each user (user ", b, ", event ", e - lo,
                  ")");
    int64_t diff;
    DV365_CHECK(hi == lo || (!__builtin_sub_overflow(tl.request_ts[b], tl.ts[lo], &diff) &&
                             !__builtin_sub_overflow(tl.request_ts[b], tl.ts[hi - 1], &diff)),
                op, "request_ts[", b, "] - ts overflows int64 (user ", b, ")");
  }

  tl.C = cats_in.size(0);
  at::Tensor cats = cats_in.contiguous();
  AT_DISPATCH_INTEGRAL_TYPES(cats.scalar_type(), "dv365_cats", [&] {
    const scalar_t* c = cats.data_ptr<scalar_t>();
    for (int64_t i = 0; i < cats.numel(); ++i)
      DV365_CHECK(c[i] >= 0 && c[i] <= static_cast<scalar_t>(prog::kMaxCatValue), op, "cats values must lie in [0, ",
                  int64_t(prog::kMaxCatValue), "], got ", int64_t(c[i]), " (row ", i / std::max<int64_t>(tl.N, 1),
                  ", event ", i % std::max<int64_t>(tl.N, 1), ")");
  });
  if (cats.scalar_type() != at::kByte && cats.scalar_type() != at::kChar) cats = cats.to(at::kByte);
  tl.cats = static_cast<const uint8_t*>(cats.data_ptr());

  const at::Tensor floats = floats_in.contiguous();
  if (floats.size(0) >= 2) {
    tl.dur = floats.data_ptr<float>();
    tl.dwell = tl.dur + tl.N;
  }

  for (size_t t = 0; t < ids.size(); ++t) {
    at::Tensor c = ids[t].contiguous();
    tl.ids.push_back(c.data_ptr<int64_t>());
    tl.holders.push_back(std::move(c));
  }
  tl.holders.insert(tl.holders.end(), {offsets, ts, request_ts, cats, floats});
  return tl;
}

// Splits long users into parts so that a batch of a few users still fills every thread; parts of a
// split user accumulate into their own partial buffers (slot), merged afterwards.
std::vector<Task> make_tasks(const Timeline& tl, bool split, int64_t& num_slots) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t chunk = split ? std::max<int64_t>(4096, (tl.N + 4 * threads - 1) / (4 * threads)) : INT64_MAX;
  std::vector<Task> tasks;
  num_slots = 0;
  for (int64_t b = 0; b < tl.B; ++b) {
    const int64_t lo = tl.offsets[b], hi = tl.offsets[b + 1];
    if (hi - lo <= chunk) {
      tasks.push_back({b, lo, hi, -1});
      continue;
    }
    const int64_t parts = (hi - lo + chunk - 1) / chunk;
    for (int64_t i = 0; i < parts; ++i)
      tasks.push_back({b, lo + (hi - lo) * i / parts, lo + (hi - lo) * (i + 1) / parts, num_slots++});
  }
  return tasks;
}

void build_segments(const Program& p, const Timeline& tl, const Task& task, Segments& seg) {
  const int64_t S = p.S, G = p.G, W = p.W;
  const int64_t ub = tl.offsets[task.b], ue = tl.offsets[task.b + 1];
  const __int128 req = tl.request_ts[task.b];
  seg.win_a.resize(S);
  seg.win_z.resize(S);
  seg.bounds.assign({task.lo, task.hi});
  auto first_at_least = [&](__int128 key) {
    return std::lower_bound(tl.ts + ub, tl.ts + ue, key, [](int64_t v, __int128 k) { return __int128(v) < k; }) - tl.ts;
  };
  for (int64_t s = 0; s < S; ++s) {
    // lo < req - ts <= hi  <=>  req - hi <= ts < req - lo
    const int64_t a = std::clamp<int64_t>(first_at_least(req - p.pl->win_hi[s]), task.lo, task.hi);
    const int64_t z = std::clamp<int64_t>(first_at_least(req - p.pl->win_lo[s]), task.lo, task.hi);
    seg.win_a[s] = a;
    seg.win_z[s] = std::max(a, z);
    seg.bounds.push_back(a);
    seg.bounds.push_back(seg.win_z[s]);
  }
  std::sort(seg.bounds.begin(), seg.bounds.end());
  seg.bounds.erase(std::unique(seg.bounds.begin(), seg.bounds.end()), seg.bounds.end());
  const int64_t nseg = static_cast<int64_t>(seg.bounds.size()) - 1;
  seg.active.assign(std::max<int64_t>(nseg, 0) * W, 0);
  seg.any_active.assign(std::max<int64_t>(nseg, 0), 0);
  seg.gs_off.assign(std::max<int64_t>(nseg, 0) * (G + 1), 0);
  seg.gs.clear();
  for (int64_t k = 0; k < nseg; ++k) {
    const int64_t x0 = seg.bounds[k], x1 = seg.bounds[k + 1];
    int64_t* off = seg.gs_off.data() + k * (G + 1);
    const int64_t base = static_cast<int64_t>(seg.gs.size());
    for (int64_t g = 0; g < G; ++g) {
      off[g] = static_cast<int64_t>(seg.gs.size()) - base;
      const Group& q = p.pl->groups[g];
      for (int64_t i = q.first; i < q.first + q.count; ++i) {
        const int64_t s = p.pl->group_slices[i];
        if (seg.win_a[s] <= x0 && x1 <= seg.win_z[s]) {
          seg.gs.push_back(s);
          seg.active[k * W + g / 64] |= uint64_t{1} << (g % 64);
          seg.any_active[k] = 1;
        }
      }
    }
    off[G] = static_cast<int64_t>(seg.gs.size()) - base;
    for (int64_t g = 0; g <= G; ++g) off[g] += base;
  }
}

// Runs fn(worker, task_index) over every task, handing tasks out dynamically (users differ in length).
template <typename F>
void for_each_task(int64_t num_tasks, const F& fn) {
  const int64_t workers = std::min<int64_t>(std::max<int64_t>(1, at::get_num_threads()), num_tasks);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t worker = begin; worker < end; ++worker) fn([&] { return next.fetch_add(1); });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> slice_timeline_cpu(at::TensorList ids, const at::Tensor& offsets,
                                                                  const at::Tensor& ts, const at::Tensor& cats,
                                                                  const at::Tensor& floats, const at::Tensor& request_ts,
                                                                  const at::Tensor& prog_i, const at::Tensor& prog_f) {
  const char* op = "slice_timeline";
  const Timeline tl = check_timeline(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f);
  const Program p = compile_program(op, prog_i, prog_f, static_cast<int64_t>(ids.size()), tl.C, floats.size(0));
  const int64_t S = p.S, B = tl.B;
  int64_t num_slots = 0;
  const std::vector<Task> tasks = make_tasks(tl, true, num_slots);
  const int64_t nt = static_cast<int64_t>(tasks.size());
  std::vector<int64_t> count(nt * S, 0);
  for_each_task(nt, [&](const auto& next) {
    EvalScratch x(p);
    Segments seg;
    for (int64_t i; (i = next()) < nt;) {
      build_segments(p, tl, tasks[i], seg);
      DV365_ISA_CALL(timeline_task<false>(p, tl, seg, x, count.data() + i * S, nullptr, nullptr));
    }
  });
  // KeyedJaggedTensor order: slice-major, then user, then timeline order (tasks are in user, event order)
  at::Tensor lengths = at::zeros({S * B}, at::TensorOptions().dtype(at::kLong));
  int64_t* len = lengths.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t i = 0; i < nt; ++i) {
      const int64_t c = count[i * S + s];
      count[i * S + s] = total;
      total += c;
      len[s * B + tasks[i].b] += c;
    }
  }
  at::Tensor values = at::empty({total}, at::TensorOptions().dtype(at::kLong));
  at::Tensor weights = at::empty({total}, at::TensorOptions().dtype(at::kFloat));
  int64_t* v = values.data_ptr<int64_t>();
  float* w = weights.data_ptr<float>();
  for_each_task(nt, [&](const auto& next) {
    EvalScratch x(p);
    Segments seg;
    for (int64_t i; (i = next()) < nt;) {
      build_segments(p, tl, tasks[i], seg);
      DV365_ISA_CALL(timeline_task<true>(p, tl, seg, x, count.data() + i * S, v, w));
    }
  });
  return {values, weights, lengths};
}

void check_ids_in_range(const char* op, const Timeline& tl, const std::vector<int64_t>& rows) {
  for (size_t t = 0; t < rows.size(); ++t) {
    const int64_t* id = tl.ids[t];
    const int64_t r = rows[t];
    bool ok = true;
    for (int64_t e = 0; e < tl.N; ++e) ok &= (id[e] >= 0) & (id[e] < r);
    if (!ok) {
      for (int64_t e = 0; e < tl.N; ++e)
        DV365_CHECK(id[e] >= 0 && id[e] < r, op, "ids[", t, "][", e, "] = ", id[e], " is out of range for a table of ",
                    r, " rows");
    }
  }
}

std::tuple<at::Tensor, at::Tensor> sliced_pool_cpu(at::TensorList tables, at::TensorList ids, const at::Tensor& offsets,
                                                   const at::Tensor& ts, const at::Tensor& cats, const at::Tensor& floats,
                                                   const at::Tensor& request_ts, const at::Tensor& prog_i,
                                                   const at::Tensor& prog_f, bool sparse) {
  const char* op = "sliced_pool";
  checks::tables(op, tables, ids, ts);
  const Timeline tl = check_timeline(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f);
  const int64_t T = static_cast<int64_t>(tables.size());
  const Program p = compile_program(op, prog_i, prog_f, T, tl.C, floats.size(0));
  std::vector<int64_t> rows(T);
  for (int64_t t = 0; t < T; ++t) rows[t] = tables[t].size(0);
  check_ids_in_range(op, tl, rows);
  const int64_t S = p.S, B = tl.B, D = tables[0].size(1);
  at::Tensor pooled = at::empty({B, S, D}, tables[0].options());
  at::Tensor wsum_out = at::empty({B, S}, tables[0].options().dtype(at::kFloat));
  std::vector<at::Tensor> holders;
  int64_t num_slots = 0;
  const std::vector<Task> tasks = make_tasks(tl, true, num_slots);
  const int64_t nt = static_cast<int64_t>(tasks.size());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, pooled.scalar_type(), "dv365_sliced_pool", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    TableView<scalar_t> tv;
    tv.D = D;
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor tab = tables[t].stride(1) == 1 || D <= 1 ? tables[t] : tables[t].contiguous();
      tv.ptr.push_back(tab.data_ptr<scalar_t>());
      tv.row_stride.push_back(tab.stride(0));
      holders.push_back(std::move(tab));
    }
    std::vector<acc_t> part_acc(num_slots * S * D);
    std::vector<double> part_wsum(num_slots * S);
    scalar_t* out = pooled.data_ptr<scalar_t>();
    float* wout = wsum_out.data_ptr<float>();
    auto finish = [&](int64_t b, const acc_t* acc, const double* wsum) {
      for (int64_t s = 0; s < S; ++s) {
        const acc_t den = static_cast<acc_t>(wsum[s]);
        scalar_t* o = out + (b * S + s) * D;
        const acc_t* a = acc + s * D;
        if (den > 0) {
          for (int64_t d = 0; d < D; ++d) o[d] = static_cast<scalar_t>(a[d] / den);
        } else {
          for (int64_t d = 0; d < D; ++d) o[d] = scalar_t(0);
        }
        wout[b * S + s] = static_cast<float>(den);
      }
    };
    for_each_task(nt, [&](const auto& next) {
      EvalScratch x(p);
      PoolScratch<acc_t> ps(p, D);
      Segments seg;
      std::vector<acc_t> acc(S * D);
      std::vector<double> wsum(S);
      for (int64_t i; (i = next()) < nt;) {
        const Task& task = tasks[i];
        acc_t* a = task.slot >= 0 ? part_acc.data() + task.slot * S * D : acc.data();
        double* ws = task.slot >= 0 ? part_wsum.data() + task.slot * S : wsum.data();
        if (task.slot < 0) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          std::fill(wsum.begin(), wsum.end(), 0.0);
        }
        build_segments(p, tl, task, seg);
        DV365_ISA_CALL(pool_task<scalar_t, acc_t>(p, tl, tv, seg, x, ps, a, ws));
        if (task.slot < 0) finish(task.b, a, ws);
      }
    });
    // merge the parts of split users, in task order
    std::vector<int64_t> first_part(B, -1), num_parts(B, 0);
    for (const Task& task : tasks) {
      if (task.slot < 0) continue;
      if (first_part[task.b] < 0) first_part[task.b] = task.slot;
      ++num_parts[task.b];
    }
    // a small merge runs inline: a second parallel region's barrier costs more than it saves
    const int64_t merge_grain = num_slots * S * D < (int64_t{1} << 20) ? std::max<int64_t>(B, 1) : 1;
    at::parallel_for(0, B, merge_grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        if (first_part[b] < 0) continue;
        acc_t* a = part_acc.data() + first_part[b] * S * D;
        double* ws = part_wsum.data() + first_part[b] * S;
        for (int64_t j = 1; j < num_parts[b]; ++j) {
          const acc_t* pa = part_acc.data() + (first_part[b] + j) * S * D;
          const double* pw = part_wsum.data() + (first_part[b] + j) * S;
          for (int64_t q = 0; q < S * D; ++q) a[q] += pa[q];
          for (int64_t s = 0; s < S; ++s) ws[s] += pw[s];
        }
        finish(b, a, ws);
      }
    });
  });
  return {pooled, wsum_out};
}

struct BackwardInputs {
  Timeline tl;
  Program p;
  at::Tensor grad, wsum;
};

BackwardInputs check_backward(const char* op, const at::Tensor& grad_in, const at::Tensor& wsum_in, at::TensorList ids,
                              const at::Tensor& offsets, const at::Tensor& ts, const at::Tensor& cats,
                              const at::Tensor& floats, const at::Tensor& request_ts, const at::Tensor& prog_i,
                              const at::Tensor& prog_f) {
  BackwardInputs in{check_timeline(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f), Program{}, {}, {}};
  in.p = compile_program(op, prog_i, prog_f, static_cast<int64_t>(ids.size()), in.tl.C, floats.size(0));
  const int64_t B = in.tl.B, S = in.p.S;
  checks::backward(op, grad_in, wsum_in, ts, B, S);
  in.grad = grad_in.contiguous();
  in.wsum = wsum_in.contiguous();
  return in;
}

// 1 / weight_sum (0 where weight_sum <= 0). For float64 the sums are recomputed in float64, as the
// forward's weight_sum output is rounded to float32.
template <typename acc_t>
std::vector<acc_t> inverse_weight_sums(const Program& p, const Timeline& tl, const at::Tensor& wsum) {
  const int64_t S = p.S;
  std::vector<acc_t> inv(wsum.numel());
  if constexpr (std::is_same_v<acc_t, double>) {
    std::vector<double> sums(tl.B * S, 0.0);
    int64_t num_slots = 0;
    const std::vector<Task> tasks = make_tasks(tl, false, num_slots);
    const int64_t nt = static_cast<int64_t>(tasks.size());
    for_each_task(nt, [&](const auto& next) {
      EvalScratch x(p);
      Segments seg;
      for (int64_t i; (i = next()) < nt;) {
        build_segments(p, tl, tasks[i], seg);
        DV365_ISA_CALL(wsum_task(p, tl, seg, x, sums.data() + tasks[i].b * S));
      }
    });
    for (size_t i = 0; i < inv.size(); ++i) inv[i] = sums[i] > 0 ? 1.0 / sums[i] : 0.0;
  } else {
    const float* w = wsum.data_ptr<float>();
    for (size_t i = 0; i < inv.size(); ++i) inv[i] = w[i] > 0 ? acc_t(1) / static_cast<acc_t>(w[i]) : acc_t(0);
  }
  return inv;
}

std::vector<at::Tensor> sliced_pool_backward_rows_cpu(const at::Tensor& grad, const at::Tensor& weight_sum,
                                                      at::TensorList ids, const at::Tensor& offsets, const at::Tensor& ts,
                                                      const at::Tensor& cats, const at::Tensor& floats,
                                                      const at::Tensor& request_ts, const at::Tensor& prog_i,
                                                      const at::Tensor& prog_f) {
  const char* op = "sliced_pool_backward_rows";
  const BackwardInputs in =
      check_backward(op, grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f);
  const Program& p = in.p;
  const Timeline& tl = in.tl;
  const int64_t T = static_cast<int64_t>(ids.size()), S = p.S, D = in.grad.size(2);
  std::vector<at::Tensor> rows;
  for (int64_t t = 0; t < T; ++t) rows.push_back(at::empty({tl.N, D}, in.grad.options()));
  int64_t num_slots = 0;
  const std::vector<Task> tasks = make_tasks(tl, true, num_slots);
  const int64_t nt = static_cast<int64_t>(tasks.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.grad.scalar_type(), "dv365_sliced_pool_bwd_rows", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const std::vector<acc_t> inv = inverse_weight_sums<acc_t>(p, tl, in.wsum);
    const scalar_t* g = in.grad.data_ptr<scalar_t>();
    std::vector<scalar_t*> out;
    for (auto& r : rows) out.push_back(r.data_ptr<scalar_t>());
    for_each_task(nt, [&](const auto& next) {
      EvalScratch x(p);
      Segments seg;
      std::vector<acc_t> gg(p.G * D), rowbuf(T * D);
      for (int64_t i; (i = next()) < nt;) {
        const Task& task = tasks[i];
        build_segments(p, tl, task, seg);
        DV365_ISA_CALL(rows_task<scalar_t, acc_t>(p, tl, seg, x, g + task.b * S * D, inv.data() + task.b * S, D, T,
                       gg.data(), rowbuf.data(), out.data()));
      }
    });
  });
  return rows;
}

std::vector<at::Tensor> sliced_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& weight_sum, at::TensorList ids,
                                                 const at::Tensor& offsets, const at::Tensor& ts, const at::Tensor& cats,
                                                 const at::Tensor& floats, const at::Tensor& request_ts,
                                                 const at::Tensor& prog_i, const at::Tensor& prog_f,
                                                 c10::SymIntArrayRef num_rows_sym) {
  const char* op = "sliced_pool_backward";
  const BackwardInputs in =
      check_backward(op, grad, weight_sum, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f);
  const Program& p = in.p;
  const Timeline& tl = in.tl;
  const int64_t T = static_cast<int64_t>(ids.size()), S = p.S, D = in.grad.size(2);
  std::vector<int64_t> num_rows;
  for (const auto& r : num_rows_sym) num_rows.push_back(r.guard_int(__FILE__, __LINE__));
  checks::num_rows(op, num_rows, T);
  check_ids_in_range(op, tl, num_rows);
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, in.grad.scalar_type(), "dv365_sliced_pool_bwd", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    constexpr bool direct = std::is_same_v<scalar_t, acc_t>;
    const std::vector<acc_t> inv = inverse_weight_sums<acc_t>(p, tl, in.wsum);
    const scalar_t* g = in.grad.data_ptr<scalar_t>();
    std::vector<at::Tensor> acc_tensors;
    std::vector<acc_t*> out;
    for (int64_t t = 0; t < T; ++t) {
      acc_tensors.push_back(at::empty({num_rows[t], D}, in.grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value)));
      out.push_back(acc_tensors.back().data_ptr<acc_t>());
    }
    // each worker owns a slice of every table's rows: it zeroes them, then adds the events that hit them
    const int64_t K = std::max<int64_t>(1, at::get_num_threads());
    at::parallel_for(0, K, 1, [&](int64_t begin, int64_t end) {
      EvalScratch x(p);
      Segments seg;
      std::vector<acc_t> gg(p.G * D);
      for (int64_t k = begin; k < end; ++k) {
        std::vector<int64_t> lo(T), hi(T);
        for (int64_t t = 0; t < T; ++t) {
          lo[t] = num_rows[t] * k / K;
          hi[t] = num_rows[t] * (k + 1) / K;
          std::fill(out[t] + lo[t] * D, out[t] + hi[t] * D, acc_t(0));
        }
        for (int64_t b = 0; b < tl.B; ++b) {
          const Task task{b, tl.offsets[b], tl.offsets[b + 1], -1};
          build_segments(p, tl, task, seg);
          DV365_ISA_CALL(dense_task<scalar_t, acc_t>(p, tl, seg, x, g + b * S * D, inv.data() + b * S, D, lo.data(),
                         hi.data(), gg.data(), out.data()));
        }
      }
    });
    for (int64_t t = 0; t < T; ++t) grads.push_back(direct ? acc_tensors[t] : acc_tensors[t].to(in.grad.scalar_type()));
  });
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(dv365, CPU, m) {
  m.impl("slice_timeline", &slice_timeline_cpu);
  m.impl("sliced_pool", &sliced_pool_cpu);
  m.impl("sliced_pool_backward", &sliced_pool_backward_cpu);
  m.impl("sliced_pool_backward_rows", &sliced_pool_backward_rows_cpu);
}

}  // namespace dv365
