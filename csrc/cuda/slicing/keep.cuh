// The keep pass (keep.cu): every predicate of the work items evaluated once per event before the pooling
// kernels, which read its masks and weights (Keep, slicing.h).
#pragma once

#include "cuda/slicing/plan.cuh"

namespace dv365::cuda::slicing {

// The keep pass runs (ran) for this plan (its buffers hold every block and weighted group).
__device__ __forceinline__ bool keep_ready(const Keep& kp, const PlanView& v, const Timeline& tl) {
  return kp.mask != nullptr && v.hdr[kNumBlocks] <= kp.blocks && v.hdr[kNumGroups] <= kp.groups &&
         v.hdr[kNumWeighted] <= kp.weighted && min(tl.cat_fields, int64_t(kPackedCats)) == kp.fields;
}

// The scratch without its keep buffers when the keep pass's shared memory would not fit (the pooling kernels then
// evaluate the predicates).
Scratch with_keep(Scratch sc);

// Launches the keep pass over the items of the plan (nothing when sc.keep has no buffers).
cudaError_t launch_keep_pass(const Timeline& tl, const Program& prog, int64_t t_count, const Scratch& sc,
                             int64_t items_cap, int32_t* flag, cudaStream_t stream);

}  // namespace dv365::cuda::slicing
