// Launchers of the int4 rowwise code kernels (csrc/cuda/int4.cu; host side: int4_ops.cpp).
#pragma once

#include "cuda/launch.h"

namespace dv365::cuda {

// out [rows, out_width] (uint8) = codes of x [rows, d] (row stride `row_stride` elements, unit column stride;
// dtype float32, bfloat16 or float16). Sets kNotFinite in `flag` for a row with a non-finite value,
// kNotEncodable for one whose scale or bias overflows its format, and notes either row in the record slot
// `first_bad_row` (launch.h).
cudaError_t launch_int4_quantize(const void* x, DType dtype, int64_t rows, int64_t d, int64_t row_stride,
                                 bool half_scale_bias, uint8_t* out, int64_t out_width, int32_t* flag,
                                 int64_t* first_bad_row, cudaStream_t stream);

// out [rows, 2 * (width - tail)] (dtype float32, bfloat16 or float16) = values of the codes packed [rows, width]
// (row stride `row_stride` bytes, unit column stride).
cudaError_t launch_int4_dequantize(const uint8_t* packed, int64_t rows, int64_t width, int64_t row_stride,
                                   bool half_scale_bias, void* out, DType dtype, cudaStream_t stream);

}  // namespace dv365::cuda
