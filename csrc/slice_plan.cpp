// The slice plan builder (slice_plan.h): the one grouping of a slice program, for every backend. No ATen.
#include "slice_plan.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <utility>

#include "dv365_prog.h"

namespace dv365::plan {
namespace {

std::atomic<int64_t> g_builds{0};

uint64_t bits_of(double v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

std::string str(int64_t v) { return std::to_string(v); }

// The first invalid entry of slice s, or "". The order and the words are the kernels' since the first release
// (table, flags, float rows, then each categorical field).
std::string check_slice(const int64_t* r, int64_t s, int64_t T, int64_t C, int64_t F) {
  if (!(r[prog::kTable] >= 0 && r[prog::kTable] < T))
    return "prog_i[" + str(s) + ", TABLE] = " + str(r[prog::kTable]) + " is out of range for " + str(T) + " tables";
  const int64_t flags = r[prog::kFlags];
  if (!(flags >= 0 && flags <= prog::kAllFlags))
    return "prog_i[" + str(s) + ", FLAGS] = " + str(flags) +
           " has unknown bits (WEIGHTED=1, DWELL_FILTER=2, RATIO_FILTER=4)";
  if (!(flags == 0 || F >= 2))
    return "floats has " + str(F) + " rows but slice " + str(s) +
           " uses dwell, ratio or weight (needs rows video_duration, dwell_time)";
  const int64_t field_cols[3] = {prog::kCatField0, prog::kCatField1, prog::kCatField2};
  for (int j = 0; j < prog::kNumCatFilters; ++j) {
    const int64_t field = r[field_cols[j]];
    if (field >= C)
      return "prog_i[" + str(s) + ", CAT_FIELD" + str(j) + "] = " + str(field) + " is out of range for cats with " +
             str(C) + " rows";
  }
  return "";
}

// Slice s's categorical filters, one (field, mask) per field it filters on, by field: two filters on one field
// must both accept a value, so their masks are ANDed.
std::vector<std::pair<int64_t, uint64_t>> merged_filters(const int64_t* r) {
  std::map<int64_t, uint64_t> per_field;
  const int64_t field_cols[3] = {prog::kCatField0, prog::kCatField1, prog::kCatField2};
  const int64_t mask_cols[3] = {prog::kCatMask0, prog::kCatMask1, prog::kCatMask2};
  for (int j = 0; j < prog::kNumCatFilters; ++j) {
    const int64_t field = r[field_cols[j]];
    if (field < 0) continue;
    const uint64_t m = static_cast<uint64_t>(r[mask_cols[j]]);
    auto it = per_field.find(field);
    per_field[field] = it == per_field.end() ? m : (it->second & m);
  }
  return {per_field.begin(), per_field.end()};
}

}  // namespace

std::string build_slice_plan(const int64_t* pi, const double* pf, int64_t S, int64_t T, int64_t C, int64_t F,
                             SlicePlan& p) {
  for (int64_t s = 0; s < S; ++s) {
    std::string error = check_slice(pi + s * prog::kNumInt, s, T, C, F);
    if (!error.empty()) return error;
  }
  g_builds.fetch_add(1, std::memory_order_relaxed);
  p = SlicePlan{};
  p.S = S;
  p.T = T;
  p.slice_group.resize(S);
  p.win_lo.resize(S);
  p.win_hi.resize(S);

  // groups in order of their leaders: a key that is equal iff two slices keep the same events up to the window
  std::map<std::vector<uint64_t>, int64_t> by_key;
  std::vector<std::vector<std::pair<int64_t, uint64_t>>> filters;  // per group (its leader's, merged)
  std::vector<std::vector<int64_t>> members;
  std::vector<int64_t> raw_group(S);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t* r = pi + s * prog::kNumInt;
    const double* f = pf + s * prog::kNumFloat;
    p.win_lo[s] = r[prog::kWinLo];
    p.win_hi[s] = r[prog::kWinHi];
    const int64_t flags = r[prog::kFlags];
    auto merged = merged_filters(r);
    std::vector<uint64_t> key = {static_cast<uint64_t>(r[prog::kTable]), static_cast<uint64_t>(flags)};
    for (const auto& [field, m] : merged) key.insert(key.end(), {static_cast<uint64_t>(field), m});
    key.push_back(~uint64_t{0});  // ends the filters: a field index can never equal it
    if (flags & prog::kDwellFilter) key.insert(key.end(), {bits_of(f[prog::kDwellLo]), bits_of(f[prog::kDwellHi])});
    if (flags & prog::kRatioFilter)
      key.insert(key.end(), {bits_of(f[prog::kRatioLo]), bits_of(f[prog::kRatioHi]), bits_of(f[prog::kBeta])});
    if (flags & prog::kWeighted) key.insert(key.end(), {bits_of(f[prog::kGamma]), bits_of(f[prog::kS0])});
    auto [it, fresh] = by_key.emplace(std::move(key), static_cast<int64_t>(members.size()));
    if (fresh) {
      members.emplace_back();
      filters.push_back(std::move(merged));
    }
    members[it->second].push_back(s);
    raw_group[s] = it->second;
  }
  // number them by table, then leader (members[i] was created in leader order)
  std::vector<int64_t> order(members.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return pi[members[a][0] * prog::kNumInt + prog::kTable] < pi[members[b][0] * prog::kNumInt + prog::kTable];
  });
  p.G = static_cast<int64_t>(order.size());
  p.W = std::max<int64_t>(1, (p.G + 63) / 64);
  std::vector<int64_t> number(order.size());
  p.table_groups.assign(T + 1, 0);
  p.table_slices.assign(T + 1, 0);
  p.float_groups.assign(p.W, 0);
  std::map<uint64_t, int64_t> beta_idx, gamma_idx;
  std::vector<int64_t> rank_in_table(T, 0);
  for (int64_t g = 0; g < p.G; ++g) {
    const std::vector<int64_t>& slices = members[order[g]];
    number[order[g]] = g;
    const int64_t lead = slices.front();
    const int64_t* r = pi + lead * prog::kNumInt;
    const double* f = pf + lead * prog::kNumFloat;
    Group q;
    q.table = r[prog::kTable];
    q.leader = lead;
    q.flags = r[prog::kFlags];
    q.rank = rank_in_table[q.table]++;
    q.dwell_lo = f[prog::kDwellLo];
    q.dwell_hi = f[prog::kDwellHi];
    q.ratio_lo = f[prog::kRatioLo];
    q.ratio_hi = f[prog::kRatioHi];
    q.beta_value = f[prog::kBeta];
    q.gamma_value = f[prog::kGamma];
    q.s0 = f[prog::kS0];
    if (q.flags & prog::kWeighted) q.wslot = p.num_weighted++;
    if (q.flags & prog::kRatioFilter) {
      auto [it, fresh] = beta_idx.emplace(bits_of(q.beta_value), static_cast<int64_t>(p.betas.size()));
      if (fresh) p.betas.push_back(q.beta_value);
      q.beta = it->second;
    }
    if (q.flags & prog::kWeighted) {
      auto [it, fresh] = gamma_idx.emplace(bits_of(q.gamma_value), static_cast<int64_t>(p.gammas.size()));
      if (fresh) p.gammas.push_back(q.gamma_value);
      q.gamma = it->second;
    }
    if (q.flags) p.float_groups[g / 64] |= uint64_t{1} << (g % 64);
    q.first = static_cast<int64_t>(p.group_slices.size());
    q.count = static_cast<int64_t>(slices.size());
    p.group_slices.insert(p.group_slices.end(), slices.begin(), slices.end());
    ++p.table_groups[q.table + 1];
    p.table_slices[q.table + 1] += q.count;
    p.groups.push_back(q);
  }
  for (int64_t t = 0; t < T; ++t) {
    p.table_groups[t + 1] += p.table_groups[t];
    p.table_slices[t + 1] += p.table_slices[t];
  }
  for (int64_t s = 0; s < S; ++s) p.slice_group[s] = number[raw_group[s]];

  // the distinct window bounds and the segments some window covers
  p.bounds.reserve(2 * S);
  for (int64_t s = 0; s < S; ++s) {
    p.bounds.push_back(p.win_lo[s]);
    p.bounds.push_back(p.win_hi[s]);
  }
  std::sort(p.bounds.begin(), p.bounds.end());
  p.bounds.erase(std::unique(p.bounds.begin(), p.bounds.end()), p.bounds.end());
  const int64_t K = static_cast<int64_t>(p.bounds.size());
  p.covered.assign(K + 1, 0);
  for (int64_t s = 0; s < S; ++s) {
    // the segments j with win_lo <= bounds[j - 1] and bounds[j] <= win_hi: j - 1 from lo's position, j up to hi's
    const int64_t a = std::lower_bound(p.bounds.begin(), p.bounds.end(), p.win_lo[s]) - p.bounds.begin() + 1;
    const int64_t z = std::lower_bound(p.bounds.begin(), p.bounds.end(), p.win_hi[s]) - p.bounds.begin();
    for (int64_t j = a; j <= z && j < K; ++j) p.covered[j] = 1;
  }

  // the categorical lookup tables
  std::vector<char> field_used(C, 0);
  for (const auto& fs : filters)
    for (const auto& fm : fs) field_used[fm.first] = 1;
  for (int64_t field = 0; field < C; ++field)
    if (field_used[field]) p.cat_fields.push_back(field);
  p.cat_pass.assign(p.cat_fields.size() * prog::kPlanCatValues * p.W, 0);
  for (size_t i = 0; i < p.cat_fields.size(); ++i) {
    for (size_t raw = 0; raw < filters.size(); ++raw) {
      const int64_t g = number[raw];
      uint64_t accept = ~uint64_t{0};
      for (const auto& [field, m] : filters[raw])
        if (field == p.cat_fields[i]) accept = m;
      for (int64_t v = 0; v < prog::kPlanCatValues; ++v)
        if ((accept >> v) & 1) p.cat_pass[(i * prog::kPlanCatValues + v) * p.W + g / 64] |= uint64_t{1} << (g % 64);
    }
  }
  return "";
}

void serialize_slice_plan(const SlicePlan& p, std::vector<int64_t>& out, std::vector<double>& out_f) {
  const int64_t K = static_cast<int64_t>(p.bounds.size());
  const int64_t NF = static_cast<int64_t>(p.cat_fields.size());
  out.assign(prog::kPlanHeader, 0);
  out[prog::kPlanNumSlices] = p.S;
  out[prog::kPlanNumTables] = p.T;
  out[prog::kPlanNumGroups] = p.G;
  out[prog::kPlanNumBounds] = K;
  out[prog::kPlanNumCatFields] = NF;
  out[prog::kPlanNumWeighted] = p.num_weighted;
  out[prog::kPlanNumBetas] = static_cast<int64_t>(p.betas.size());
  out[prog::kPlanNumGammas] = static_cast<int64_t>(p.gammas.size());
  out[prog::kPlanWords] = p.W;
  auto section = [&](int64_t at, const auto& values) {
    out[at] = static_cast<int64_t>(out.size());
    for (const auto v : values) out.push_back(static_cast<int64_t>(v));
  };
  section(prog::kPlanSliceGroupAt, p.slice_group);
  out[prog::kPlanGroupsAt] = static_cast<int64_t>(out.size());
  for (const Group& q : p.groups) {
    int64_t row[prog::kGroupCols];
    row[prog::kGroupTable] = q.table;
    row[prog::kGroupLeader] = q.leader;
    row[prog::kGroupFlags] = q.flags;
    row[prog::kGroupRank] = q.rank;
    row[prog::kGroupWslot] = q.wslot;
    row[prog::kGroupBeta] = q.beta;
    row[prog::kGroupGamma] = q.gamma;
    row[prog::kGroupFirst] = q.first;
    row[prog::kGroupCount] = q.count;
    out.insert(out.end(), row, row + prog::kGroupCols);
  }
  section(prog::kPlanGroupSlicesAt, p.group_slices);
  section(prog::kPlanTableGroupsAt, p.table_groups);
  section(prog::kPlanTableSlicesAt, p.table_slices);
  section(prog::kPlanBoundsAt, p.bounds);
  section(prog::kPlanCoveredAt, p.covered);
  section(prog::kPlanCatFieldsAt, p.cat_fields);
  section(prog::kPlanCatPassAt, p.cat_pass);  // the 64-bit words' bits, as int64
  section(prog::kPlanFloatGroupsAt, p.float_groups);
  out_f.clear();
  out[prog::kPlanBetasAt] = 0;
  out_f.insert(out_f.end(), p.betas.begin(), p.betas.end());
  out[prog::kPlanGammasAt] = static_cast<int64_t>(out_f.size());
  out_f.insert(out_f.end(), p.gammas.begin(), p.gammas.end());
}

int64_t slice_plan_builds() { return g_builds.load(std::memory_order_relaxed); }

}  // namespace dv365::plan
