// The slice plan: what every slicing backend (the CPU kernels, the CUDA host and kernels, the Triton kernels
// through dv365::plan_slices) evaluates a slice program with. Built once per program by build_slice_plan; its
// tensor form (serialize_slice_plan, the layout of dv365_ops/program.py's plan section, mirrored in
// dv365_prog.h) is what the op returns and what the CUDA host uploads.
//
// No ATen here: the CUDA kernel files (nvcc, no ATen) include this header, and the CPU kernels and the CUDA host
// link the one implementation (slice_plan.cpp).
//
// Groups. Slices that keep the same events up to their time window share one predicate: a group. Two slices are
// in one group iff they name the same table and flags, the same categorical filters once the filters on one
// field are merged (AND of their masks, whichever of the three columns they are written in), and the same float
// parameters their flags read (compared bit for bit). So a group's predicate is its leader's row (its first
// slice), evaluated column by column: every backend evaluates a group identically. Groups are numbered by table,
// then by their leader.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dv365::plan {

struct Group {
  int64_t table = 0;
  int64_t leader = 0;  // the group's first slice: its prog_i / prog_f row is the group's predicate
  int64_t flags = 0;
  int64_t rank = 0;    // among its table's groups
  int64_t wslot = -1;  // among the weighted groups (-1: unweighted)
  int64_t beta = -1;   // index into SlicePlan::betas (-1: no ratio filter)
  int64_t gamma = -1;  // index into SlicePlan::gammas (-1: unweighted)
  int64_t first = 0, count = 0;  // its slices: group_slices[first, first + count), ascending
  // the leader's float parameters (those its flags do not read are as the program row has them)
  double dwell_lo = 0, dwell_hi = 0, ratio_lo = 0, ratio_hi = 0, beta_value = 0, gamma_value = 0, s0 = 0;
};

struct SlicePlan {
  int64_t S = 0, T = 0, G = 0;
  int64_t W = 1;  // 64-bit words of a set of groups: max(1, ceil(G / 64))
  std::vector<int64_t> slice_group;   // [S]
  std::vector<Group> groups;          // [G]: by table, then leader
  std::vector<int64_t> group_slices;  // [S]: group 0's slices, then group 1's, ... (so table by table)
  std::vector<int64_t> table_groups;  // [T + 1]: table t's groups are [table_groups[t], table_groups[t + 1])
  std::vector<int64_t> table_slices;  // [T + 1]: table t's slices are group_slices[table_slices[t], ...[t + 1])
  std::vector<int64_t> win_lo, win_hi;  // [S]: the windows (prog_i WIN_LO / WIN_HI)
  // the distinct window bounds, ascending; segment j (0..K) is request_ts - ts in (bounds[j - 1], bounds[j]]
  // (j = 0: <= bounds[0], j = K: > bounds[K - 1]); slice s covers j iff win_lo[s] <= bounds[j - 1] and
  // bounds[j] <= win_hi[s], so segments 0 and K lie outside every window
  std::vector<int64_t> bounds;
  std::vector<int64_t> covered;  // [K + 1]: 1 where some slice covers the segment
  std::vector<int64_t> cat_fields;  // the categorical fields some group filters on, ascending
  // [cat_fields][64 values][W]: bit g % 64 of word g / 64 is set iff group g accepts the value on the field
  // (a group without a filter on the field accepts every value)
  std::vector<uint64_t> cat_pass;
  std::vector<uint64_t> float_groups;  // [W]: the groups with flags (dwell, ratio or weight)
  std::vector<double> betas, gammas;   // the distinct BETA of ratio groups, GAMMA of weighted groups
  int64_t num_weighted = 0;
};

// Checks the program's entries against a timeline with T tables, C categorical and F float rows, and plans it.
// Returns "" on success, else the first error's message (what the slicing ops raise after "dv365::<op>: ").
// prog_i is [S, NUM_INT] and prog_f [S, NUM_FLOAT], contiguous.
std::string build_slice_plan(const int64_t* prog_i, const double* prog_f, int64_t S, int64_t T, int64_t C, int64_t F,
                             SlicePlan& out);

// The tensor form (dv365_ops/program.py, plan section): plan_i int64, plan_f float64.
void serialize_slice_plan(const SlicePlan& plan, std::vector<int64_t>& plan_i, std::vector<double>& plan_f);

// How many plans build_slice_plan has built in this process (tests count them to see that plans are reused).
int64_t slice_plan_builds();

}  // namespace dv365::plan
