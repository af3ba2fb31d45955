// Kernels shared by several op families.
#include <algorithm>

#include "cuda/device.cuh"

namespace dv365::cuda {
namespace {

__global__ void check_offsets_kernel(const int64_t* __restrict__ offsets, int64_t m, int64_t n, int32_t* flag,
                                     int64_t* first_step) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i <= m;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = offsets[i];
    const bool step_bad = i > 0 && o < offsets[i - 1];
    const bool bad = (i == 0 && o != 0) || (i == m && o != n) || step_bad || o < 0 || o > n;
    if (bad) set_error(flag, kOffsetsBad);
    if (step_bad) note_first(first_step, i - 1);
  }
}

}  // namespace

cudaError_t launch_check_offsets(const int64_t* offsets, int64_t m, int64_t n, int32_t* flag, cudaStream_t stream,
                                 int64_t* first_step) {
  const int threads = 256;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(ceil_div(m + 1, threads), 4096));
  check_offsets_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(offsets, m, n, flag, first_step);
  return cudaGetLastError();
}

}  // namespace dv365::cuda
