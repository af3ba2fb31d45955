// The event data checks on the device (the CPU kernels' data checks), reported through the error flag.
#include <algorithm>

#include "cuda/slicing/common.cuh"

namespace dv365::cuda::slicing {
namespace {

// ---- validation of the event data (the CPU kernels' data checks) ----
__global__ void validate_timeline_kernel(Timeline tl, int32_t* flag) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t e = first; e < tl.n; e += stride) {
    for (int64_t f = 0; f < tl.cat_fields; ++f) {
      const int64_t v = load_cat(tl, f, e);
      if (v < 0 || v > prog::kMaxCatValue) set_error(flag, kCatOutOfRange);
    }
    if (e > 0 && tl.num_users > 0) {
      // e and e - 1 belong to one user unless some offsets entry equals e
      int64_t lo = 0, hi = tl.num_users;
      while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (tl.offsets[mid] <= e) lo = mid; else hi = mid;
      }
      if (tl.offsets[lo] < e && tl.ts[e - 1] > tl.ts[e]) set_error(flag, kTsOrder);
    }
  }
  for (int64_t b = first; b < tl.num_users; b += stride) {
    int64_t lo, hi;
    user_range(tl, b, lo, hi);
    if (hi == lo) continue;
    const int64_t r = tl.request_ts[b];
    for (const int64_t t : {tl.ts[lo], tl.ts[hi - 1]}) {
      const int64_t d = delta(r, t);
      if (((r ^ t) & (r ^ d)) < 0) set_error(flag, kTsOverflow);
    }
  }
}

// Every table's ids in [0, rows) (grid.y = table).
__global__ void validate_ids_kernel(Tables tabs, int64_t n, int32_t* flag) {
  const int64_t t = blockIdx.y;
  const int64_t* ids = tabs.ids[t];
  const int64_t rows = tabs.rows[t];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n; e += stride) {
    const int64_t id = ids[e];
    if (id < 0 || id >= rows) {
      set_error(flag, kIdOutOfRange);
      return;
    }
  }
}

}  // namespace

cudaError_t launch_validate_ids(const Tables& tabs, int64_t n, int32_t* flag, cudaStream_t stream) {
  if (n == 0 || tabs.num_tables == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 132 * 4)),
                  static_cast<unsigned>(tabs.num_tables));
  validate_ids_kernel<<<grid, 256, 0, stream>>>(tabs, n, flag);
  return cudaGetLastError();
}

cudaError_t launch_validate_timeline(const Timeline& tl, int32_t* flag, cudaStream_t stream) {
  if (tl.n == 0 && tl.num_users == 0) return cudaSuccess;
  const int64_t work = std::max(tl.n, tl.num_users);
  validate_timeline_kernel<<<static_cast<unsigned>(std::min<int64_t>(ceil_div(work, 256), 132 * 8)), 256, 0,
                             stream>>>(tl, flag);
  return cudaGetLastError();
}

}  // namespace dv365::cuda::slicing
