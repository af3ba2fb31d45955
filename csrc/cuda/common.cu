#include "cuda/common.cuh"

namespace dv365::cuda {

__global__ void check_offsets_kernel(const int64_t* __restrict__ offsets, int64_t m, int64_t n, int32_t* flag) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i <= m;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = offsets[i];
    const bool bad = (i == 0 && o != 0) || (i == m && o != n) || (i > 0 && o < offsets[i - 1]) || o < 0 || o > n;
    if (bad) set_error(flag, kOffsetsBad);
  }
}

}  // namespace dv365::cuda
