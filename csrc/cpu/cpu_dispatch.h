// Runtime ISA dispatch for hot CPU loops: the wheel targets baseline x86-64 (SSE2), so a loop body is
// compiled twice, once with AVX2 + F16C, and the fast copy runs where the CPU has them.
// DV365_CPU_BASELINE=1 in the environment forces the baseline copy (tests compare the two).
#pragma once

#include <cstdlib>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define DV365_HAVE_AVX2_CLONE 1
#define DV365_TARGET_AVX2 __attribute__((target("avx2,f16c")))
#else
#define DV365_HAVE_AVX2_CLONE 0
#define DV365_TARGET_AVX2
#endif

#if defined(__GNUC__)
#define DV365_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DV365_ALWAYS_INLINE inline
#endif

namespace dv365 {

inline bool cpu_has_avx2() {
#if DV365_HAVE_AVX2_CLONE
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                          std::getenv("DV365_CPU_BASELINE") == nullptr;
  return has;
#else
  return false;
#endif
}

}  // namespace dv365

// DV365_CPU_DISPATCH(body) defines body_dispatch(args...): `body` (a DV365_ALWAYS_INLINE function or
// template) inlined into an AVX2 + F16C copy and a baseline copy, chosen once per call.
#define DV365_CPU_DISPATCH(body)                                   \
  template <typename... Args>                                      \
  DV365_TARGET_AVX2 void body##_avx2(Args... args) {               \
    body(args...);                                                 \
  }                                                                \
  template <typename... Args>                                      \
  void body##_base(Args... args) {                                 \
    body(args...);                                                 \
  }                                                                \
  template <typename... Args>                                      \
  void body##_dispatch(Args... args) {                             \
    if (::dv365::cpu_has_avx2()) {                                 \
      body##_avx2(args...);                                        \
    } else {                                                       \
      body##_base(args...);                                        \
    }                                                              \
  }
