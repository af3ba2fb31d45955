// Deferred data checks for the CUDA ops. A CUDA op learns that its input was bad (an id out of range, offsets
// that decrease) only on the device, and reading that flag back costs a device synchronization per call, which
// stalls the host's launch queue in a training step. In deferred mode an op's kernels report into a flag kept per
// (op, device) instead, the call returns without reading it, and check() reads every op's flag at once (one
// copy), when the caller synchronises anyway (a training loop's log step). The kernels never read out of bounds
// on bad input, whichever mode: they skip the offending element. Generic C++ (no CUDA headers), so a CPU-only
// build has the mode too; there the CPU kernels raise at once and nothing is ever deferred.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace dv365::deferred {

using Describe = std::string (*)(int32_t bits);

bool enabled();
bool set_enabled(bool on);  // returns the previous mode

// The flag of `op` on `like`'s device: a zeroed int64 [words] buffer (an error record of launch.h: the error
// bits in word 0's low 32 bits), made on first use and kept until check() finds it set. Returns an undefined
// tensor when there is none yet and none may be made (`may_create` false: a CUDA graph is being captured, and
// a buffer made now would belong to the graph's memory pool).
at::Tensor flag(const char* op, const at::Tensor& like, int64_t words, Describe describe, bool may_create);

// True when `t` is one of the kept flags (the op then skips its own read).
bool is_flag(const at::Tensor& t);

// Reads every kept flag (one copy per device), zeroes those that were set, and raises one error naming each op
// that found bad input since the last check.
void check();

}  // namespace dv365::deferred
