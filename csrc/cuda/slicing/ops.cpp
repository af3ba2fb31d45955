// Host side of the multi-slicing CUDA ops (kernels: the .cu files of this folder): argument checks (the metadata
// checks of csrc/checks/slicing.h, which the CPU kernels make too), allocation, the launches, and the device error
// flag.
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "checks/slicing.h"
#include "cuda/host.h"
#include "cuda/slicing/slicing.h"
#include "slice_plan_cache.h"

namespace dv365::cuda {
namespace {

using slicing::kMaxTables;

// Groups per CTA block and events per work item. Smaller blocks mean less shared memory per CTA and more CTAs
// per SM, at the price of gathering a table's rows once per block. The sweeps that chose 8 and 1024 are in
// docs/tuning.md (DV365_SP_GROUPS, DV365_SP_ITEM); 16 groups measured faster for the fp32 forward only, and 8 stays
// until a sweep covers bf16 and the backward too.
constexpr size_t kDefaultBlockGroups = 8;
constexpr int64_t kDefaultItemEvents = 1024;

struct Inputs {
  slicing::Timeline tl{};
  slicing::Program prog{};
  at::Tensor offsets, ts, cats, floats, request_ts, prog_i, prog_f;
  std::vector<at::Tensor> ids;
  int64_t b = 0, n = 0, s = 0;
  std::shared_ptr<plan::CachedPlan> plan;  // the program's plan (slice_plan_cache.h); null for an empty program
  std::vector<int64_t> groups;  // the plan's groups per table (empty for an empty program)
  int64_t weighted = 0;         // of them, the weighted ones (kWeighted)
};

using Rerun = std::function<void()>;

constexpr const char* kNoPlanWhileCapturing =
    "this slice program has no plan yet, and its plan is built on the host, which a CUDA graph capture forbids: "
    "run the op once with this program before capturing it";

// The DV365_SP_* knobs (docs/tuning.md), read once per process: they compare kernel variants against the defaults,
// each variant in a process of its own (tests/test_cuda.py, benchmarks/gpu/bench_gpu.py).
struct Knobs {
  int block_groups = 0;  // DV365_SP_GROUPS (1..32); 0: the op's default
  int rows_in_flight = 8;  // DV365_SP_ROWS (8 or 16)
  int64_t item_events = kDefaultItemEvents;  // DV365_SP_ITEM (at least 64)
  bool keep = true;  // DV365_SP_KEEP=0 skips the keep pass
  bool sort_rows = true;  // DV365_SP_SORT=0: the dense backward merges only consecutive repeats of a row
};

const Knobs& knobs() {
  static const Knobs k = [] {
    Knobs r;
    if (const char* env = std::getenv("DV365_SP_GROUPS")) r.block_groups = std::clamp(std::atoi(env), 1, 32);
    if (const char* env = std::getenv("DV365_SP_ROWS")) r.rows_in_flight = std::atoi(env) >= 16 ? 16 : 8;
    if (const char* env = std::getenv("DV365_SP_ITEM")) r.item_events = std::max<int64_t>(64, std::atoll(env));
    if (const char* env = std::getenv("DV365_SP_KEEP")) r.keep = std::atoi(env) != 0;
    if (const char* env = std::getenv("DV365_SP_SORT")) r.sort_rows = std::atoi(env) != 0;
    return r;
  }();
  return k;
}

// Groups per CTA block: the most groups one table has, at most `cap` (DV365_SP_GROUPS overrides), and the
// blocks the device plan cuts.
slicing::Tuning tuning_of(const Inputs& in, size_t cap) {
  slicing::Tuning tune;
  tune.block_groups = static_cast<int>(kDefaultBlockGroups);
  if (!in.groups.empty()) {
    int64_t most = 1;
    for (const int64_t g : in.groups) most = std::max(most, g);
    tune.block_groups = static_cast<int>(std::min<int64_t>(most, static_cast<int64_t>(cap)));
  }
  if (knobs().block_groups > 0) tune.block_groups = knobs().block_groups;
  tune.block_groups = std::clamp(tune.block_groups, 1, slicing::kMaxBlockGroups);
  for (const int64_t g : in.groups) tune.num_blocks += ceil_div(g, int64_t(tune.block_groups));
  tune.num_blocks = std::max<int64_t>(tune.num_blocks, 1);
  tune.rows_in_flight = knobs().rows_in_flight;
  tune.sort_rows = knobs().sort_rows;
  return tune;
}

// The program's plan: the one kept for it (slice_plan_cache.h), else built from the program read on the host (a
// copy and a synchronization, once per program). While a graph is captured only a kept plan serves. On an invalid
// program the CPU kernel's message wins through rerun (its timeline data checks come first).
std::shared_ptr<plan::CachedPlan> plan_of(const char* op, const at::Tensor& prog_i, const at::Tensor& prog_f,
                                          int64_t num_tables, int64_t cat_fields, int64_t float_fields,
                                          const Rerun& rerun) {
  if (capturing()) {
    auto kept = plan::find_plan(prog_i, prog_f, num_tables, cat_fields, float_fields);
    DV365_CHECK(kept != nullptr, op, kNoPlanWhileCapturing);
    return kept;
  }
  bool invalid = false;
  try {
    return plan::plan_of(op, prog_i, prog_f, num_tables, cat_fields, float_fields);
  } catch (const c10::Error&) {
    invalid = true;
  }
  if (invalid) rerun();
  return plan::plan_of(op, prog_i, prog_f, num_tables, cat_fields, float_fields);  // raises its own message
}

// The metadata checks (checks/slicing.h, the CPU kernels' own) and the program's plan, whose building checks the
// program's entries. The event data checks run on the device (launch_data_checks).
Inputs check_timeline(const char* op, const at::TensorList ids, const at::Tensor& offsets, const at::Tensor& ts,
                      const at::Tensor& cats, const at::Tensor& floats, const at::Tensor& request_ts,
                      const at::Tensor& prog_i, const at::Tensor& prog_f, const Rerun& rerun, int64_t num_tables,
                      const at::Tensor& flag) {
  checks::timeline(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f);
  checks::program_shapes(op, prog_i, prog_f);
  DV365_CHECK(num_tables <= kMaxTables, op, "at most ", kMaxTables, " tables are supported on CUDA, got ", num_tables);
  const int64_t n = ts.numel();
  const int64_t b = offsets.numel() - 1;
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
  if (in.s > 0) {
    in.plan = plan_of(op, prog_i, prog_f, num_tables, cats.size(0), num_floats, rerun);
    const plan::SlicePlan& p = in.plan->plan;
    for (int64_t t = 0; t < num_tables; ++t) in.groups.push_back(p.table_groups[t + 1] - p.table_groups[t]);
    in.weighted = p.num_weighted;
  }
  in.tl.offsets = in.offsets.data_ptr<int64_t>();
  in.tl.num_users = b;
  in.tl.n = n;
  in.tl.ts = in.ts.data_ptr<int64_t>();
  in.tl.request_ts = in.request_ts.data_ptr<int64_t>();
  in.tl.cats = in.cats.data_ptr();
  in.tl.cat_fields = cats.size(0);
  in.tl.cat_bytes = static_cast<int>(cats.element_size());
  in.tl.floats = num_floats >= 2 ? in.floats.data_ptr<float>() : nullptr;
  in.prog.prog_i = in.prog_i.data_ptr<int64_t>();
  in.prog.prog_f = in.prog_f.data_ptr<double>();
  in.prog.s = in.s;
  return in;
}

// The event data checks on the device: offsets, the timeline's fields and (tables given) every table's ids; their
// bits are read with the op's other errors. The kernels never read out of bounds on bad data, so the ops launch
// these after their pooling kernels: the host time of three launches is then hidden behind the pooling kernel
// rather than spent before it.
void launch_data_checks(const Inputs& in, const slicing::Tables* tables, const at::Tensor& flag, const char* op) {
  check_offsets_async(in.offsets, in.n, flag, op);
  check_launch(slicing::launch_validate_timeline(in.tl, flag.data_ptr<int32_t>(), current_stream()), op);
  if (tables) check_launch(slicing::launch_validate_ids(*tables, in.n, flag.data_ptr<int32_t>(), current_stream()), op);
}

slicing::Tables table_set(const Inputs& in) {
  slicing::Tables s{};
  s.num_tables = static_cast<int64_t>(in.ids.size());
  for (int64_t t = 0; t < s.num_tables; ++t) s.ids[t] = in.ids[t].data_ptr<int64_t>();
  return s;
}

// The tables as the kernels read them (checked by checks::tables): unit column stride.
std::vector<at::Tensor> table_views(at::TensorList tables, slicing::Tables& s) {
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

// A call's scratch: its copy of the device plan, its work items, the keep pass's buffers.
struct ScratchHolder {
  at::Tensor plan, items, keep;
  slicing::Scratch sc{};
};

// The device plans that a CUDA graph has read: a graph copies its plan from one at every replay, so they must
// outlive the plan cache's entries. Never destroyed (CUDA tensors must not be freed after the runtime shut down).
void keep_for_graphs(const at::Tensor& device_plan) {
  static std::mutex mu;
  static auto* kept = new std::vector<at::Tensor>;
  const std::lock_guard<std::mutex> lock(mu);
  for (const auto& t : *kept)
    if (t.unsafeGetTensorImpl() == device_plan.unsafeGetTensorImpl()) return;
  kept->push_back(device_plan);
}

// The program's device plan for these groups per block (slicing::fill_device_plan), uploaded once per device and
// block size and kept with the program's plan. The upload is synchronous, so any stream may read it afterwards.
at::Tensor device_plan(const char* op, const Inputs& in, int64_t t_count, int bg) {
  const int64_t device = in.ts.device().index();
  at::Tensor plan = in.plan->find_derived(device, bg);
  if (!plan.defined()) {
    DV365_CHECK(!capturing(), op, kNoPlanWhileCapturing);
    at::Tensor host = at::empty({slicing::plan_elems(in.s, t_count)}, at::TensorOptions().dtype(at::kLong));
    slicing::fill_device_plan(in.plan->plan, t_count, bg, host.data_ptr<int64_t>());
    in.plan->add_derived(device, bg, host.to(in.ts.device()));
    plan = in.plan->find_derived(device, bg);  // (another thread's, if it added one first)
  }
  if (capturing()) {
    keep_for_graphs(plan);
  } else {
    plan.record_stream(c10::cuda::getCurrentCUDAStream());  // an evicted plan is freed only after this call's copy
  }
  return plan;
}

// The call's scratch: its plan, copied from the program's device plan on the current stream (no synchronization),
// its work items, and the keep pass's buffers (slicing::Keep), sized by the plan (none with DV365_SP_KEEP=0, for
// comparison).
ScratchHolder make_scratch(const char* op, const Inputs& in, int64_t t_count, const slicing::Tuning& tune) {
  ScratchHolder h;
  h.sc.item_events = knobs().item_events;
  h.plan = at::empty({slicing::plan_elems(in.s, t_count)}, in.ts.options());
  h.plan.copy_(device_plan(op, in, t_count, tune.block_groups), /*non_blocking=*/true);
  h.items = at::empty({4 * slicing::max_items(in.s, in.b, in.n, h.sc.item_events)}, in.ts.options());
  h.sc.plan = h.plan.data_ptr<int64_t>();
  h.sc.items = h.items.data_ptr<int64_t>();
  if (in.n > 0 && knobs().keep) {
    slicing::Keep& k = h.sc.keep;
    k.n = in.n;
    k.blocks = tune.num_blocks;
    for (const int64_t g : in.groups) k.groups += g;
    k.weighted = in.weighted;
    k.fields = std::min<int64_t>(in.cats.size(0), slicing::kPackedCats);
    h.keep = at::empty({(k.blocks + k.weighted) * in.n}, in.ts.options().dtype(at::kInt));
    k.mask = reinterpret_cast<uint32_t*>(h.keep.data_ptr<int32_t>());
    k.w = reinterpret_cast<float*>(k.mask + k.blocks * in.n);
  }
  return h;
}

std::tuple<at::Tensor, at::Tensor> sliced_pool_cuda(at::TensorList tables, at::TensorList ids, const at::Tensor& offsets,
                                                    const at::Tensor& ts, const at::Tensor& cats,
                                                    const at::Tensor& floats, const at::Tensor& request_ts,
                                                    const at::Tensor& prog_i, const at::Tensor& prog_f, bool sparse) {
  constexpr const char* op = "sliced_pool";
  checks::tables(op, tables, ids, ts);
  const c10::cuda::CUDAGuard guard(ts.device());
  const Rerun rerun = [&] {
    rerun_on_cpu<std::tuple<at::Tensor, at::Tensor>(at::TensorList, at::TensorList, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>(
        "dv365::sliced_pool", table_stand_ins(tables), to_cpu(ids), offsets.cpu(), ts.cpu(), cats.cpu(), floats.cpu(),
        request_ts.cpu(), prog_i.cpu(), prog_f.cpu(), sparse);
  };
  auto flag = new_error_flag(ts, op);
  Inputs in = check_timeline(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, rerun,
                             static_cast<int64_t>(tables.size()), flag);
  slicing::Tables set = table_set(in);
  const auto tabs = table_views(tables, set);
  const int64_t d = tables[0].size(1);
  const auto dtype = tables[0].scalar_type();
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  auto pooled = at::empty({in.b, in.s, d}, tables[0].options());
  auto wsum = at::empty({in.b, in.s}, tables[0].options().dtype(at::kFloat));
  const int64_t t_count = static_cast<int64_t>(tables.size());
  const slicing::Tuning tune = tuning_of(in, kDefaultBlockGroups);
  ScratchHolder scratch;
  if (in.b > 0 && in.s > 0) {
    // the numerators [B, S, D] and the weight sums [B, S] in one zeroed buffer (one fill, not two)
    auto acc = at::zeros({in.b * in.s * (d + 1)}, tables[0].options().dtype(acc_dtype));
    void* num = acc.data_ptr();
    void* wacc = static_cast<char*>(num) + in.b * in.s * d * acc.element_size();
    scratch = make_scratch(op, in, t_count, tune);
    check_launch(slicing::launch_sliced_pool(in.tl, set, in.prog, d, dtype_of(dtype), tune, scratch.sc, num, wacc,
                                             pooled.data_ptr(), wsum.data_ptr<float>(), flag.data_ptr<int32_t>(),
                                             current_stream()),
                 op);
  }
  launch_data_checks(in, &set, flag, op);
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
  auto flag = new_error_flag(ts, op);
  const int64_t t_count = static_cast<int64_t>(ids.size());
  Inputs in = check_timeline(op, ids, offsets, ts, cats, floats, request_ts, prog_i, prog_f, rerun, t_count, flag);
  checks::backward(op, grad, weight_sum, ts, in.b, in.s);
  if (!kRows) checks::num_rows(op, num_rows, t_count);
  slicing::Tables set = table_set(in);
  // One block per table where the program allows (each event's row is then stored, not added into zeroed rows):
  // on the H200 the W40K backward took 4.1 ms (dense) / 3.7 ms (rows) this way, 4.6 / 6.1 ms with 11-group blocks.
  const slicing::Tuning tune = tuning_of(in, slicing::kMaxBlockGroups);
  const int64_t d = grad.size(2);
  const auto dtype = grad.scalar_type();
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const bool work = in.b > 0 && in.n > 0 && d > 0 && in.s > 0;
  std::vector<at::Tensor> outs, staging;
  const bool narrow = dtype == at::kHalf || dtype == at::kBFloat16;
  for (int64_t t = 0; t < t_count; ++t) {
    if (kRows) {
      // the kernels write every row (zeros included) when they run
      outs.push_back(work ? at::empty({in.n, d}, grad.options()) : at::zeros({in.n, d}, grad.options()));
      set.rows[t] = std::numeric_limits<int64_t>::max();
      // a table the plan cuts into several blocks adds its rows into a float32 accumulator (16-bit dtypes); so
      // does a table no slice names (no block: its rows are the zeroed accumulator's)
      const bool several = in.groups.empty() || ceil_div(in.groups[t], int64_t(tune.block_groups)) != 1;
      if (narrow && work && several) {
        staging.push_back(at::empty({in.n, d}, grad.options().dtype(at::kFloat)));
        set.rows_acc[t] = staging.back().data_ptr();
      } else {
        set.rows_acc[t] = narrow ? nullptr : outs.back().data_ptr();
      }
    } else {
      outs.push_back(at::zeros({num_rows[t], d}, grad.options().dtype(acc_dtype)));
      set.rows[t] = num_rows[t];
    }
    set.out[t] = outs.back().data_ptr();
  }
  ScratchHolder scratch;
  if (work) {
    const at::Tensor g = grad.contiguous();
    at::Tensor ws = weight_sum.contiguous();
    scratch = make_scratch(op, in, t_count, tune);
    const bool ws_double = dtype == at::kDouble;
    if (ws_double) {
      // float64 recomputes the weight sums in float64 (as the CPU kernel does): the forward's weight_sum output
      // is rounded to float32. The forward kernel runs on a one-column zero table that every id maps to.
      const auto opts = grad.options();
      at::Tensor zero = at::zeros({1, 1}, opts);
      slicing::Tables sums = set;
      for (int64_t t = 0; t < t_count; ++t) {
        sums.table[t] = zero.data_ptr();
        sums.row_stride[t] = 0;
        sums.rows[t] = std::numeric_limits<int64_t>::max();
      }
      at::Tensor num = at::zeros({in.b, in.s, 1}, opts);
      ws = at::zeros({in.b, in.s}, opts);
      at::Tensor pooled = at::empty({in.b, in.s, 1}, opts);
      at::Tensor ws32 = at::empty({in.b, in.s}, opts.dtype(at::kFloat));
      check_launch(slicing::launch_sliced_pool(in.tl, sums, in.prog, 1, DType::kDouble, tune, scratch.sc,
                                               num.data_ptr(), ws.data_ptr(), pooled.data_ptr(),
                                               ws32.data_ptr<float>(), flag.data_ptr<int32_t>(), current_stream()),
                   op);
    }
    check_launch(slicing::launch_sliced_pool_backward(kRows, in.tl, set, in.prog, d, dtype_of(dtype),
                                                      tune, scratch.sc, g.data_ptr(), ws.data_ptr(),
                                                      ws_double, flag.data_ptr<int32_t>(), current_stream()),
                 op);
  }
  launch_data_checks(in, kRows ? nullptr : &set, flag, op);
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
  slicing::Tables set = table_set(in);
  auto lengths = at::zeros({in.s * in.b}, ts.options());
  check_launch(slicing::launch_slice_timeline_count(in.tl, set, in.prog, lengths.data_ptr<int64_t>(),
                                                    flag.data_ptr<int32_t>(), current_stream()),
               op);
  launch_data_checks(in, nullptr, flag, op);
  // the output size depends on the data: one synchronization here (so this op cannot be graph-captured)
  check_error_flag(flag, op, rerun);
  auto ends = at::cumsum(lengths, 0);
  const int64_t total = lengths.numel() ? ends.select(0, -1).item<int64_t>() : 0;
  auto values = at::empty({total}, ts.options());
  auto weights = at::empty({total}, ts.options().dtype(at::kFloat));
  if (total > 0) {
    auto starts = at::sub(ends, lengths);
    check_launch(slicing::launch_slice_timeline_emit(in.tl, set, in.prog, starts.data_ptr<int64_t>(), total,
                                                     values.data_ptr<int64_t>(), weights.data_ptr<float>(),
                                                     flag.data_ptr<int32_t>(), current_stream()),
                 op);
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
