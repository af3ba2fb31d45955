// The slice program's column layout and the slice plan's layout, shared by the CPU kernels, the CUDA kernels
// (which include no ATen), their host code and the plan builder (slice_plan.h). dv365_ops/program.py documents
// both; tests/test_program_layout.py checks the two files agree.
#pragma once

#include <cstdint>
#include <limits>

namespace dv365 {

namespace prog {
enum Int : int64_t {
  kTable = 0,
  kCatField0 = 1,
  kCatMask0 = 2,
  kCatField1 = 3,
  kCatMask1 = 4,
  kCatField2 = 5,
  kCatMask2 = 6,
  kWinLo = 7,
  kWinHi = 8,  // kNoUpperBound: no upper bound
  kFlags = 9,
  kNumInt = 10,
};
enum Float : int64_t {
  kDwellLo = 0,
  kDwellHi = 1,
  kRatioLo = 2,
  kRatioHi = 3,
  kBeta = 4,
  kGamma = 5,
  kS0 = 6,
  kNumFloat = 7,
};
enum Flag : int64_t {
  kWeighted = 1,
  kDwellFilter = 2,
  kRatioFilter = 4,
  kAllFlags = 7,  // every bit a program may set
};
static_assert(kAllFlags == (kWeighted | kDwellFilter | kRatioFilter));
// the rows of the `floats` timeline input ([F, N]; F = 0 when the timeline has neither)
enum FloatRow : int64_t {
  kFloatDuration = 0,  // video_duration, seconds
  kFloatDwell = 1,     // dwell_time, seconds
};
constexpr int64_t kNumCatFilters = 3;
constexpr int64_t kMaxCatValue = 63;  // categorical values lie in [0, kMaxCatValue]
// WIN_HI of a window without an upper bound
constexpr int64_t kNoUpperBound = 9223372036854775807;
static_assert(kNoUpperBound == std::numeric_limits<int64_t>::max());
// the largest weight a debiased score gives (dv365_ops/program.py MAX_SCORE): a near-zero duration cannot
// overflow a slice's weighted sum
constexpr double kMaxScore = 65536.0;

// The slice plan's tensor form (dv365_ops/program.py, plan section): plan_i's header entries, the header entries
// that hold where each section starts (kPlan...At), and the columns of the group rows.
enum PlanHeader : int64_t {
  kPlanNumSlices = 0,
  kPlanNumTables = 1,
  kPlanNumGroups = 2,
  kPlanNumBounds = 3,
  kPlanNumCatFields = 4,
  kPlanNumWeighted = 5,
  kPlanNumBetas = 6,
  kPlanNumGammas = 7,
  kPlanWords = 8,
  kPlanSliceGroupAt = 16,
  kPlanGroupsAt = 17,
  kPlanGroupSlicesAt = 18,
  kPlanTableGroupsAt = 19,
  kPlanTableSlicesAt = 20,
  kPlanBoundsAt = 21,
  kPlanCoveredAt = 22,
  kPlanCatFieldsAt = 23,
  kPlanCatPassAt = 24,
  kPlanFloatGroupsAt = 25,
  kPlanBetasAt = 26,
  kPlanGammasAt = 27,
  kPlanHeader = 32,
};
enum GroupCol : int64_t {
  kGroupTable = 0,
  kGroupLeader = 1,
  kGroupFlags = 2,
  kGroupRank = 3,
  kGroupWslot = 4,
  kGroupBeta = 5,
  kGroupGamma = 6,
  kGroupFirst = 7,
  kGroupCount = 8,
  kGroupCols = 9,
};
constexpr int64_t kPlanCatValues = 64;  // categorical values a lookup table has a row for: 0 .. kMaxCatValue
}  // namespace prog

}  // namespace dv365
