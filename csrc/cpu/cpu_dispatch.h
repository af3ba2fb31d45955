// The one runtime ISA-dispatch scheme of the CPU kernels.
//
// The wheel targets baseline x86-64 (SSE2). Each kernel family keeps its hot loops in `<family>_kernels.inc`
// (no #include there: it is compiled inside namespaces), and its .cpp compiles that file twice:
//
//   #define DV365_ISA_KERNELS "int4_kernels.inc"
//   #include "cpu_isa_copies.inc"
//
// which puts one copy, built for the baseline, in namespace `base`, and one built for AVX2 + FMA + F16C (every
// function of the file, helpers included, not only the ones marked inline) in namespace `avx2`. Inside the
// .inc, DV365_ISA_AVX2 is 1 in the AVX2 copy and 0 in the baseline one, for code that needs intrinsics.
// DV365_ISA_CALL(f(args)) calls avx2::f(args) where cpu_use_avx2(), else base::f(args).
//
// cpu_use_avx2() is read once per process: the CPU has AVX2, FMA and F16C, and DV365_CPU_BASELINE is unset.
// DV365_CPU_BASELINE=1 forces the baseline copy of every family (tests/test_cpu_isa.py compares the two).
// The AVX2 copy may contract a * b + c into one FMA where the file allows contraction, so it agrees with the
// baseline within rounding; int4 turns contraction off for its whole file and is byte-identical in both.
#pragma once

#include <cstdlib>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define DV365_HAVE_AVX2_COPY 1
#else
#define DV365_HAVE_AVX2_COPY 0
#endif

#if defined(__GNUC__)
#define DV365_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DV365_ALWAYS_INLINE inline
#endif

namespace dv365 {

inline bool cpu_use_avx2() {
#if DV365_HAVE_AVX2_COPY
  static const bool use = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c") && std::getenv("DV365_CPU_BASELINE") == nullptr;
  return use;
#else
  return false;
#endif
}

// "avx2" or "baseline": the copy the kernels run (exposed as dv365_ops._C.cpu_isa)
inline const char* cpu_isa_name() { return cpu_use_avx2() ? "avx2" : "baseline"; }

}  // namespace dv365

#if DV365_HAVE_AVX2_COPY
#define DV365_ISA_CALL(...) (::dv365::cpu_use_avx2() ? avx2::__VA_ARGS__ : base::__VA_ARGS__)
#else
#define DV365_ISA_CALL(...) base::__VA_ARGS__
#endif
