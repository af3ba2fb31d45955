// Shared helpers for every dv365 kernel: argument checks whose messages name the op and the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define DV365_CHECK(cond, op, ...) TORCH_CHECK((cond), "dv365::", op, ": ", __VA_ARGS__)

namespace dv365 {

// Column layout of the compiled slice program (mirrors dv365_ops/program.py, which documents it;
// tests/test_slicing.py checks the two agree).
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
  kWinHi = 8,
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
};
constexpr int64_t kNumCatFilters = 3;
constexpr int64_t kMaxCatValue = 63;
}  // namespace prog

}  // namespace dv365
