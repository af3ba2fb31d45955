// slice_timeline: a count pass, then (with the exclusive cumsum of the counts) an emit pass.
#include "cuda/slicing/common.cuh"

namespace dv365::cuda::slicing {
namespace {

// ---- slice_timeline: one warp per (slice, user), a count pass then an emit pass ----
template <bool kEmit>
__global__ void slice_timeline_kernel(Timeline tl, Tables tabs, Program p, int64_t* __restrict__ lengths,
                                      const int64_t* __restrict__ starts, int64_t total, int64_t* __restrict__ values,
                                      float* __restrict__ weights, int32_t* flag) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t bcount = tl.num_users;
  if (warp >= p.s * bcount) return;
  const int64_t s = warp / bcount, b = warp % bcount;
  const int64_t table = p.prog_i[s * prog::kNumInt + prog::kTable];
  if (table < 0 || table >= tabs.num_tables) {
    if (lane == 0) {
      set_error(flag, kTableOutOfRange);
      if (!kEmit) lengths[warp] = 0;
    }
    return;
  }
  const int64_t* ids = tabs.ids[table];
  const int64_t request_ts = tl.request_ts[b];
  int64_t lo, hi;
  user_range(tl, b, lo, hi);
  int64_t count = 0;
  const int64_t base_pos = kEmit ? starts[warp] : 0;
  for (int64_t base = lo; base < hi; base += 32) {
    const int64_t e = base + lane;
    float w = 0.f;
    bool keep = false;
    if (e < hi) keep = slice_keep(p, s, tl, e, request_ts, w, flag);
    const uint32_t bits = __ballot_sync(0xffffffffu, keep);
    if (kEmit && keep) {
      const int64_t pos = base_pos + count + __popc(bits & ((1u << lane) - 1u));
      if (pos < total) {
        values[pos] = ids[e];
        weights[pos] = w;
      }
    }
    count += __popc(bits);
  }
  if (!kEmit && lane == 0) lengths[warp] = count;
}

}  // namespace

cudaError_t launch_slice_timeline_count(const Timeline& tl, const Tables& tabs, const Program& prog,
                                        int64_t* lengths, int32_t* flag, cudaStream_t stream) {
  const int64_t warps = prog.s * tl.num_users;
  if (warps == 0) return cudaSuccess;
  slice_timeline_kernel<false><<<static_cast<unsigned>(ceil_div(warps * 32, 256)), 256, 0, stream>>>(
      tl, tabs, prog, lengths, nullptr, 0, nullptr, nullptr, flag);
  return cudaGetLastError();
}

cudaError_t launch_slice_timeline_emit(const Timeline& tl, const Tables& tabs, const Program& prog,
                                       const int64_t* starts, int64_t total, int64_t* values, float* weights,
                                       int32_t* flag, cudaStream_t stream) {
  const int64_t warps = prog.s * tl.num_users;
  if (warps == 0 || total == 0) return cudaSuccess;
  slice_timeline_kernel<true><<<static_cast<unsigned>(ceil_div(warps * 32, 256)), 256, 0, stream>>>(
      tl, tabs, prog, nullptr, starts, total, values, weights, flag);
  return cudaGetLastError();
}

}  // namespace dv365::cuda::slicing
