// The per-program plan cache (slice_plan_cache.h) and dv365::plan_slices, the plan as tensors for Python.
#include "slice_plan_cache.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <list>

#include "checks/slicing.h"
#include "dv365.h"

namespace dv365::plan {
namespace {

// A program tensor's data: its storage, view and dtype. A view of the same storage with the same geometry and dtype
// is the same program (MultiSlicePooling passes a fresh float64 view of its int64 prog_f buffer every call); views
// share their base's version counter.
struct Data {
  at::Tensor held;  // no other program can take the storage while the entry lives
  const void* storage = nullptr;
  int64_t offset = 0, version = 0;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype = at::kLong;
  c10::Device device = c10::Device(c10::kCPU);
  static Data of(const at::Tensor& t) {
    return {t, t.storage().unsafeGetStorageImpl(), t.storage_offset(), static_cast<int64_t>(t._version()),
            t.sizes().vec(), t.strides().vec(), t.scalar_type(), t.device()};
  }
  bool same(const at::Tensor& t) const {
    return t.storage().unsafeGetStorageImpl() == storage && t.storage_offset() == offset &&
           static_cast<int64_t>(t._version()) == version && t.scalar_type() == dtype && t.device() == device &&
           t.sizes().equals(sizes) && t.strides().equals(strides);
  }
};

struct Key {
  Data prog_i, prog_f;
  int64_t T = 0, C = 0, F = 0;
  bool same(const at::Tensor& pi, const at::Tensor& pf, int64_t t, int64_t c, int64_t f) const {
    return t == T && c == C && f == F && prog_i.same(pi) && prog_f.same(pf);
  }
};

struct Cache {
  std::mutex mu;
  std::list<std::pair<Key, std::shared_ptr<CachedPlan>>> entries;  // most recently used first
};

// Never destroyed: entries may hold CUDA tensors, which must not be freed after the CUDA runtime shut down.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

bool versioned(const at::Tensor& pi, const at::Tensor& pf) { return !pi.is_inference() && !pf.is_inference(); }

std::shared_ptr<CachedPlan> build(const char* op, const at::Tensor& prog_i_in, const at::Tensor& prog_f_in,
                                  int64_t T, int64_t C, int64_t F) {
  const at::Tensor prog_i = prog_i_in.contiguous().cpu(), prog_f = prog_f_in.contiguous().cpu();
  auto entry = std::make_shared<CachedPlan>();
  const std::string error = build_slice_plan(prog_i.data_ptr<int64_t>(), prog_f.data_ptr<double>(), prog_i.size(0),
                                             T, C, F, entry->plan);
  DV365_CHECK(error.empty(), op, error);
  std::vector<int64_t> pi;
  std::vector<double> pf;
  serialize_slice_plan(entry->plan, pi, pf);
  entry->plan_i = at::empty({static_cast<int64_t>(pi.size())}, at::TensorOptions().dtype(at::kLong));
  entry->plan_f = at::empty({static_cast<int64_t>(pf.size())}, at::TensorOptions().dtype(at::kDouble));
  std::memcpy(entry->plan_i.data_ptr<int64_t>(), pi.data(), pi.size() * sizeof(int64_t));
  if (!pf.empty()) std::memcpy(entry->plan_f.data_ptr<double>(), pf.data(), pf.size() * sizeof(double));
  return entry;
}

}  // namespace

std::shared_ptr<CachedPlan> find_plan(const at::Tensor& prog_i, const at::Tensor& prog_f, int64_t T, int64_t C,
                                      int64_t F) {
  if (!versioned(prog_i, prog_f)) return nullptr;
  Cache& c = cache();
  const std::lock_guard<std::mutex> lock(c.mu);
  for (auto it = c.entries.begin(); it != c.entries.end(); ++it) {
    if (it->first.same(prog_i, prog_f, T, C, F)) {
      c.entries.splice(c.entries.begin(), c.entries, it);
      return c.entries.front().second;
    }
  }
  return nullptr;
}

std::shared_ptr<CachedPlan> plan_of(const char* op, const at::Tensor& prog_i, const at::Tensor& prog_f, int64_t T,
                                    int64_t C, int64_t F) {
  checks::program_shapes(op, prog_i, prog_f);
  if (auto hit = find_plan(prog_i, prog_f, T, C, F)) return hit;
  auto entry = build(op, prog_i, prog_f, T, C, F);
  if (!versioned(prog_i, prog_f)) return entry;
  Key key{Data::of(prog_i), Data::of(prog_f), T, C, F};
  Cache& c = cache();
  const std::lock_guard<std::mutex> lock(c.mu);
  // another thread may have planned the same program meanwhile: keep one entry
  for (auto it = c.entries.begin(); it != c.entries.end(); ++it) {
    if (it->first.same(prog_i, prog_f, T, C, F)) return it->second;
  }
  c.entries.emplace_front(std::move(key), entry);
  if (c.entries.size() > kMaxPrograms) c.entries.pop_back();
  return entry;
}

namespace {

std::tuple<at::Tensor, at::Tensor> plan_slices_cpu(const at::Tensor& prog_i, const at::Tensor& prog_f,
                                                   int64_t num_tables, int64_t cat_fields, int64_t float_fields) {
  const char* op = "plan_slices";
  // a CUDA program is read on the host by the cache (once per program) and shares its entry with the CUDA ops
  DV365_CHECK(prog_i.device() == prog_f.device() && (prog_i.device().is_cpu() || prog_i.device().is_cuda()), op,
              "prog_i and prog_f must be CPU or CUDA tensors on one device, got ", prog_i.device(), " and ",
              prog_f.device());
  DV365_CHECK(num_tables >= 0 && cat_fields >= 0 && float_fields >= 0, op,
              "num_tables, cat_fields and float_fields must be >= 0, got ", num_tables, ", ", cat_fields, ", ",
              float_fields);
  const auto entry = plan_of(op, prog_i, prog_f, num_tables, cat_fields, float_fields);
  // copies: the caller owns what it gets, the cache keeps its own
  return {entry->plan_i.clone(), entry->plan_f.clone()};
}

}  // namespace
}  // namespace dv365::plan

// The plan is host data whatever the program's device: CPU tensors for both keys.
TORCH_LIBRARY_IMPL(dv365, CPU, m) { m.impl("plan_slices", &dv365::plan::plan_slices_cpu); }
TORCH_LIBRARY_IMPL(dv365, CUDA, m) { m.impl("plan_slices", &dv365::plan::plan_slices_cpu); }
