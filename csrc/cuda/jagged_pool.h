// Launchers of the jagged weighted mean pooling kernels (csrc/cuda/jagged_pool.cu; host side:
// jagged_pool_ops.cpp). `weights` (optional, may be null) and the accumulators are in the accumulation dtype:
// double for a double table, float otherwise. ids and offsets are contiguous int64.
//
// Bad input sets kIdOutOfRange / kWeightsBad in `flag` and notes the first offending event in the error
// record slots `first_bad_id` / `first_bad_weight` (launch.h); the rows backward reads no ids, so checks none.
#pragma once

#include "cuda/launch.h"

namespace dv365::cuda {

// out [m, d] = weighted mean of the table rows of each bag. num [m, d] and den [m] are zeroed scratch.
cudaError_t launch_jagged_mean_pool(const void* table, DType dtype, int64_t num_rows, int64_t row_stride, int64_t d,
                                    const int64_t* ids, const int64_t* offsets, int64_t m, int64_t n,
                                    const void* weights, void* num, void* den, void* out, int32_t* flag,
                                    int64_t* first_bad_id, int64_t* first_bad_weight, cudaStream_t stream);

// rows: out [n, d] (dtype) = w_e / den[bag] * grad[bag] per event; else out [num_rows, d] (accumulation dtype,
// zeroed) += the same at row ids[e]. den [m] is scratch. grad [m, d] is contiguous.
cudaError_t launch_jagged_mean_pool_backward(bool rows, const void* grad, DType dtype, int64_t d, const int64_t* ids,
                                             int64_t num_rows, const int64_t* offsets, int64_t m, int64_t n,
                                             const void* weights, void* den, void* out, int32_t* flag,
                                             int64_t* first_bad_id, int64_t* first_bad_weight, cudaStream_t stream);

}  // namespace dv365::cuda
