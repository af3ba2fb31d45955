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
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include "checks/slicing.h"
#include "cuda/host.h"
#include "cuda/slicing/slicing.h"

namespace dv365::cuda {
namespace {

using slicing::kMaxTables;

// Groups per CTA block and events per work item. Smaller blocks mean less shared memory per CTA and more CTAs
// per SM, at the price of gathering a table's rows once per block: on the H200 (one-warp CTAs), W40K's forward
// took 2.32 ms with 8 groups per block, 2.88 / 2.51 / 2.54 / 2.70 ms with 4 / 6 / 11 / 16, and 3.43 ms with one
// block per table (21 groups) (benchmarks/results/h200_2026-11-28-session3.md). With the keep pass 16 groups
// measured faster in fp32 (1.70 against 1.79 ms, h200_2026-12-01-session5.md) but were not swept for bf16 or the
// backward, so 8 stays the default until they are.
constexpr size_t kDefaultBlockGroups = 8;
constexpr int64_t kDefaultItemEvents = 1024;

struct Inputs {
  slicing::Timeline tl{};
  slicing::Program prog{};
  at::Tensor offsets, ts, cats, floats, request_ts, prog_i, prog_f;
  std::vector<at::Tensor> ids;
  int64_t b = 0, n = 0, s = 0;
  std::vector<int64_t> groups;  // distinct groups per table; empty when the program could not be read
  int64_t weighted = 0;         // of them, the weighted ones (kWeighted)
  bool versioned = false;       // prog_i and prog_f have version counters: the device plan can be cached
};

using Rerun = std::function<void()>;

// What the host reads from a program: whether it is valid for these inputs, and its distinct groups per table
// (slices equal but for their window). The host's grouping must never be looser than the device plan's
// same_group (common.cuh): the launch grid takes the host's count as the number of blocks, so it may
// over-count (extra CTAs return) but never under-count. That is why it is not the CPU kernel's grouping,
// which merges filters on one field and so can count fewer groups.
// Reading the program copies prog_i and prog_f to the host, two synchronizations per call, so the facts of the
// last program read are kept, keyed by the tensors (held by the cache, so no other program can take their
// place) and their version counters (in-place writes through torch bump them). Inference tensors have no
// version counter and are read every call.
struct ProgramFacts {
  bool ok = true;
  std::vector<int64_t> groups;
  int64_t weighted = 0;
};

// One program as the caches know it: its two tensors (held, so their storage cannot be reused by another
// program) at their current versions. Only for tensors with version counters (not inference tensors).
struct ProgramId {
  at::Tensor prog_i, prog_f;
  int64_t vi = -1, vf = -1;
  static ProgramId of(const at::Tensor& pi, const at::Tensor& pf) {
    return {pi, pf, static_cast<int64_t>(pi._version()), static_cast<int64_t>(pf._version())};
  }
  bool same(const ProgramId& o) const {
    return prog_i.defined() && o.prog_i.unsafeGetTensorImpl() == prog_i.unsafeGetTensorImpl() &&
           o.prog_f.unsafeGetTensorImpl() == prog_f.unsafeGetTensorImpl() && o.vi == vi && o.vf == vf;
  }
};

struct FactsKey {
  ProgramId program;
  int64_t num_tables = 0, cat_fields = 0;
  bool has_floats = false;
  bool same(const FactsKey& o) const {
    return program.same(o.program) && o.num_tables == num_tables && o.cat_fields == cat_fields &&
           o.has_floats == has_floats;
  }
};

ProgramFacts read_program(const at::Tensor& prog_i, const at::Tensor& prog_f, const FactsKey& key) {
  ProgramFacts f;
  const at::Tensor pi = prog_i.contiguous().cpu(), pf = prog_f.contiguous().cpu();
  const int64_t s_count = pi.size(0);
  const int64_t* pi_p = pi.data_ptr<int64_t>();
  const double* pf_p = pf.data_ptr<double>();
  std::vector<std::set<std::vector<int64_t>>> keys(key.num_tables);
  for (int64_t s = 0; s < s_count; ++s) {
    const int64_t* r = pi_p + s * prog::kNumInt;
    const int64_t flags = r[prog::kFlags];
    const int64_t t = r[prog::kTable];
    f.ok = f.ok && t >= 0 && t < key.num_tables && flags >= 0 &&
           flags <= (prog::kWeighted | prog::kDwellFilter | prog::kRatioFilter) && (flags == 0 || key.has_floats);
    for (const int64_t col : {prog::kCatField0, prog::kCatField1, prog::kCatField2}) {
      f.ok = f.ok && r[col] < key.cat_fields;
    }
    if (t < 0 || t >= key.num_tables) continue;
    std::vector<int64_t> group(r, r + prog::kNumInt);
    group[prog::kWinLo] = group[prog::kWinHi] = 0;
    for (int j = 0; j < 3; ++j) {
      if (group[prog::kCatField0 + 2 * j] < 0) group[prog::kCatField0 + 2 * j + 1] = 0;
    }
    for (int64_t c = 0; c < prog::kNumFloat; ++c) {
      int64_t bits;
      std::memcpy(&bits, pf_p + s * prog::kNumFloat + c, sizeof bits);
      group.push_back(bits);
    }
    keys[t].insert(std::move(group));
  }
  for (const auto& k : keys) {
    f.groups.push_back(static_cast<int64_t>(k.size()));
    for (const auto& g : k) f.weighted += (g[prog::kFlags] & prog::kWeighted) != 0;
  }
  return f;
}

// The facts, or nothing while a graph is captured and the program is not the cached one (it cannot be read).
std::optional<ProgramFacts> program_facts(const at::Tensor& prog_i, const at::Tensor& prog_f, int64_t num_tables,
                                          int64_t cat_fields, bool has_floats) {
  static std::mutex mu;
  static FactsKey cached_key;
  static ProgramFacts cached;
  FactsKey key;
  const bool versioned = !prog_i.is_inference() && !prog_f.is_inference();
  if (versioned) key.program = ProgramId::of(prog_i, prog_f);
  key.num_tables = num_tables;
  key.cat_fields = cat_fields;
  key.has_floats = has_floats;
  {
    const std::lock_guard<std::mutex> lock(mu);
    if (versioned && cached_key.same(key)) return cached;
  }
  if (capturing()) return std::nullopt;
  ProgramFacts facts = read_program(prog_i, prog_f, key);
  if (versioned) {
    const std::lock_guard<std::mutex> lock(mu);
    cached_key = std::move(key);
    cached = facts;
  }
  return facts;
}

// The DV365_SP_* knobs (docs/tuning.md), read once per process: they compare kernel variants against the defaults,
// each variant in a process of its own (tests/test_cuda.py, benchmarks/gpu/bench_gpu.py).
struct Knobs {
  int block_groups = 0;  // DV365_SP_GROUPS (1..32); 0: the op's default
  int rows_in_flight = 8;  // DV365_SP_ROWS (8 or 16)
  int64_t item_events = kDefaultItemEvents;  // DV365_SP_ITEM (at least 64)
  bool keep = true;  // DV365_SP_KEEP=0 skips the keep pass
};

const Knobs& knobs() {
  static const Knobs k = [] {
    Knobs r;
    if (const char* env = std::getenv("DV365_SP_GROUPS")) r.block_groups = std::clamp(std::atoi(env), 1, 32);
    if (const char* env = std::getenv("DV365_SP_ROWS")) r.rows_in_flight = std::atoi(env) >= 16 ? 16 : 8;
    if (const char* env = std::getenv("DV365_SP_ITEM")) r.item_events = std::max<int64_t>(64, std::atoll(env));
    if (const char* env = std::getenv("DV365_SP_KEEP")) r.keep = std::atoi(env) != 0;
    return r;
  }();
  return k;
}

// Groups per CTA block: the most groups one table has, at most `cap` (DV365_SP_GROUPS overrides), and the
// blocks the device plan will cut when the groups are known.
slicing::Tuning tuning_of(const Inputs& in, size_t cap) {
  slicing::Tuning tune;
  tune.block_groups = static_cast<int>(kDefaultBlockGroups);
  if (!in.groups.empty()) {
    int64_t most = 1;
    for (const int64_t g : in.groups) most = std::max(most, g);
    tune.block_groups = static_cast<int>(std::min<int64_t>(most, static_cast<int64_t>(cap)));
  }
  if (knobs().block_groups > 0) tune.block_groups = knobs().block_groups;
  if (!in.groups.empty()) {
    for (const int64_t g : in.groups) tune.num_blocks += ceil_div(g, int64_t(tune.block_groups));
    tune.num_blocks = std::max<int64_t>(tune.num_blocks, 1);
  }
  tune.rows_in_flight = knobs().rows_in_flight;
  return tune;
}

// The metadata checks (checks/slicing.h, the CPU kernels' own) and the program's checks on the host (skipped while
// capturing a graph: they need the program on the host; on an invalid program the CPU kernel's message wins
// through rerun). The event data checks run on the device (launch_data_checks).
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
    const auto facts = program_facts(prog_i, prog_f, num_tables, cats.size(0), num_floats >= 2);
    if (facts && !facts->ok) {
      rerun();
      DV365_RAISE("dv365::", op, ": invalid slice program");
    }
    if (facts) {
      in.groups = facts->groups;
      in.weighted = facts->weighted;
    }
    // the plan cache keys on the contiguous copies (the inputs themselves when contiguous); under
    // inference_mode a copy is an inference tensor, which has no version counter
    in.versioned = !in.prog_i.is_inference() && !in.prog_f.is_inference();
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

// The device plan's scratch (int64, uninitialized: the plan kernel writes what it reads).
struct ScratchHolder {
  at::Tensor plan, items, keep;
  slicing::Scratch sc{};
};

// The device plan depends on the program, the table count and the groups per block only. Building it is one
// single-CTA kernel (~80 us on the H200 for W40K's 200 slices), so the plans of the last program are kept, one
// per block size (the forward's and the backward's differ), keyed like the program's host facts. A cached plan
// is copied into the call's scratch on the current stream; it enters the cache only after the call that built
// it has synchronized (its error check), so a later call on any stream reads a finished plan. Never while a
// graph is captured (the graph would point at a tensor the cache may drop).
struct PlanCache {
  std::mutex mu;
  ProgramId program;
  int64_t t_count = 0;
  std::vector<std::pair<int, at::Tensor>> plans;  // (block_groups, plan)
};

PlanCache& plan_cache() {
  static PlanCache c;
  return c;
}

bool same_program(const PlanCache& c, const Inputs& in, int64_t t_count) {
  return c.program.same(ProgramId::of(in.prog_i, in.prog_f)) && c.t_count == t_count;
}

// Copies a cached plan into the scratch (and marks it ready) when there is one; returns whether it did.
bool use_cached_plan(const Inputs& in, int64_t t_count, int bg, at::Tensor& plan, slicing::Scratch& sc) {
  if (!in.versioned || capturing()) return false;
  PlanCache& c = plan_cache();
  const std::lock_guard<std::mutex> lock(c.mu);
  if (!same_program(c, in, t_count)) return false;
  for (const auto& [g, cached] : c.plans) {
    if (g == bg && cached.device() == plan.device() && cached.numel() == plan.numel()) {
      plan.copy_(cached, /*non_blocking=*/true);
      sc.plan_ready = true;
      return true;
    }
  }
  return false;
}

// Called after the call's error check (a synchronization) with the plan its kernels built.
void remember_plan(const Inputs& in, int64_t t_count, int bg, const at::Tensor& plan) {
  if (!in.versioned || capturing()) return;
  PlanCache& c = plan_cache();
  const std::lock_guard<std::mutex> lock(c.mu);
  if (!same_program(c, in, t_count)) {
    c.program = ProgramId::of(in.prog_i, in.prog_f);
    c.t_count = t_count;
    c.plans.clear();
  }
  for (const auto& [g, cached] : c.plans) {
    if (g == bg && cached.device() == plan.device()) return;
  }
  c.plans.emplace_back(bg, plan);
}

// The keep pass's buffers (slicing::Keep) need the program's facts, which bound the device plan: none while a
// graph is captured with a program the host has not read, or with DV365_SP_KEEP=0 (for comparison).
ScratchHolder make_scratch(const Inputs& in, int64_t t_count, const slicing::Tuning& tune) {
  ScratchHolder h;
  h.sc.item_events = knobs().item_events;
  h.plan = at::empty({slicing::plan_elems(in.s, t_count)}, in.ts.options());
  h.items = at::empty({4 * slicing::max_items(in.s, in.b, in.n, h.sc.item_events)}, in.ts.options());
  h.sc.plan = h.plan.data_ptr<int64_t>();
  h.sc.items = h.items.data_ptr<int64_t>();
  if (!in.groups.empty() && tune.num_blocks > 0 && in.n > 0 && knobs().keep) {
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
        "dv365::sliced_pool", to_cpu(tables), to_cpu(ids), offsets.cpu(), ts.cpu(), cats.cpu(), floats.cpu(),
        request_ts.cpu(), prog_i.cpu(), prog_f.cpu(), sparse);
  };
  auto flag = new_error_flag(ts);
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
  const bool work = in.b > 0 && in.s > 0 && in.n > 0 && d > 0;
  if (in.b > 0 && in.s > 0) {
    // the numerators [B, S, D] and the weight sums [B, S] in one zeroed buffer (one fill, not two)
    auto acc = at::zeros({in.b * in.s * (d + 1)}, tables[0].options().dtype(acc_dtype));
    void* num = acc.data_ptr();
    void* wacc = static_cast<char*>(num) + in.b * in.s * d * acc.element_size();
    scratch = make_scratch(in, t_count, tune);
    if (work) use_cached_plan(in, t_count, tune.block_groups, scratch.plan, scratch.sc);
    check_launch(slicing::launch_sliced_pool(in.tl, set, in.prog, d, dtype_of(dtype), tune, scratch.sc, num, wacc,
                                             pooled.data_ptr(), wsum.data_ptr<float>(), flag.data_ptr<int32_t>(),
                                             current_stream()),
                 op);
  }
  launch_data_checks(in, &set, flag, op);
  check_error_flag(flag, op, rerun);
  if (work) remember_plan(in, t_count, tune.block_groups, scratch.plan);
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
  auto flag = new_error_flag(ts);
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
      // a table the plan may cut into several blocks adds its rows into a float32 accumulator (16-bit dtypes;
      // the host's group count bounds the device's, and is unknown while a graph is captured); so does a table no
      // slice names (no block: its rows are the zeroed accumulator's)
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
    scratch = make_scratch(in, t_count, tune);
    use_cached_plan(in, t_count, tune.block_groups, scratch.plan, scratch.sc);
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
  if (work) remember_plan(in, t_count, tune.block_groups, scratch.plan);
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
