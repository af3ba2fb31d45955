#include "deferred_checks.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/zeros.h>

#include <atomic>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "dv365.h"

namespace dv365::deferred {
namespace {

struct Entry {
  at::Tensor flag;
  Describe describe;
};

std::atomic<bool> g_enabled{false};
std::mutex g_mu;

// (op, device type, device index, words) -> flag. Never destroyed: CUDA tensors must not be freed after the
// runtime has shut down.
std::map<std::tuple<std::string, int, int, int64_t>, Entry>& entries() {
  static auto* m = new std::map<std::tuple<std::string, int, int, int64_t>, Entry>;
  return *m;
}

}  // namespace

bool enabled() { return g_enabled.load(std::memory_order_relaxed); }

bool set_enabled(bool on) { return g_enabled.exchange(on); }

at::Tensor flag(const char* op, const at::Tensor& like, int64_t words, Describe describe, bool may_create) {
  const auto key = std::make_tuple(std::string(op), static_cast<int>(like.device().type()),
                                   static_cast<int>(like.device().index()), words);
  const std::lock_guard<std::mutex> lock(g_mu);
  auto& m = entries();
  auto it = m.find(key);
  if (it != m.end()) return it->second.flag;
  if (!may_create) return {};
  at::Tensor t = at::zeros({words}, like.options().dtype(at::kLong));
  m.emplace(key, Entry{t, describe});
  return t;
}

bool is_flag(const at::Tensor& t) {
  const std::lock_guard<std::mutex> lock(g_mu);
  // by address: the ops see a flag through an int32 view of its first word
  for (const auto& [key, e] : entries()) {
    if (e.flag.data_ptr() == t.data_ptr()) return true;
  }
  return false;
}

void check() {
  std::vector<std::pair<std::string, Entry>> all;
  {
    const std::lock_guard<std::mutex> lock(g_mu);
    for (const auto& [key, e] : entries()) all.emplace_back(std::get<0>(key), e);
  }
  // word 0 of every flag, gathered per device and copied back together
  std::map<std::pair<int, int>, std::vector<size_t>> by_device;
  for (size_t i = 0; i < all.size(); ++i) {
    const auto dev = all[i].second.flag.device();
    by_device[{static_cast<int>(dev.type()), static_cast<int>(dev.index())}].push_back(i);
  }
  std::vector<int64_t> word0(all.size(), 0);
  for (const auto& [dev, idx] : by_device) {
    std::vector<at::Tensor> heads;
    for (const size_t i : idx) heads.push_back(all[i].second.flag.narrow(0, 0, 1));
    const at::Tensor host = at::cat(heads).cpu();
    const int64_t* h = host.const_data_ptr<int64_t>();
    for (size_t k = 0; k < idx.size(); ++k) word0[idx[k]] = h[k];
  }
  std::string what;
  for (size_t i = 0; i < all.size(); ++i) {
    const auto bits = static_cast<int32_t>(word0[i] & 0xFFFFFFFF);
    if (bits == 0) continue;
    all[i].second.flag.zero_();  // the next check reports only what comes after this one
    if (!what.empty()) what += "; ";
    what += detail::format("dv365::", all[i].first, " on ", all[i].second.flag.device(), ": ",
                           all[i].second.describe(bits));
  }
  if (!what.empty()) {
    DV365_RAISE("dv365 deferred checks: ", what,
                " (found on the device by a call since the last check; without deferred checks the call that "
                "received the input raises, naming the offending index)");
  }
}

}  // namespace dv365::deferred
