// CUDA host side of the int4 rowwise codes (kernels: csrc/cuda/int4.cu): the family's checks
// (csrc/checks/int4.h), allocation, the launches on the current stream, and the error record through which the
// quantizer names the first row it cannot encode.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "checks/int4.h"
#include "cuda/host.h"
#include "cuda/int4.h"

namespace dv365::cuda {
namespace {

at::Tensor int4_quantize_cuda(const at::Tensor& x, bool half_scale_bias) {
  constexpr const char* op = "int4_quantize";
  checks::int4::quantize_args(op, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), d = x.size(1);
  const int64_t width = d / 2 + checks::int4::tail_bytes(half_scale_bias);
  auto out = at::empty({rows, width}, x.options().dtype(at::kByte));
  if (rows == 0) return out;
  const at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
  // never deferred: quantizing is an export step whose bytes are read back anyway
  ErrorRecord record(x, 1, nullptr);
  check_launch(launch_int4_quantize(xc.const_data_ptr(), dtype_of(x.scalar_type()), rows, d, xc.stride(0),
                                    half_scale_bias, out.mutable_data_ptr<uint8_t>(), width, record.flag(),
                                    record.slot(0), current_stream()),
               op);
  if (record.read()) {
    // the message is built from the offending row alone, as the CPU kernel builds it
    const int64_t i = record.first(0);
    if (i >= 0) {
      const at::Tensor row = x.select(0, i).to(at::kFloat).cpu().contiguous();
      checks::int4::raise_unencodable_row(op, i, row.const_data_ptr<float>(), d, half_scale_bias);
    }
    raise_flagged(op, record.bits());
  }
  return out;
}

at::Tensor int4_dequantize_cuda(const at::Tensor& packed, bool half_scale_bias, std::optional<at::ScalarType> dtype) {
  constexpr const char* op = "int4_dequantize";
  const auto out_dtype = dtype.value_or(at::kFloat);
  checks::int4::dequantize_args(op, packed, half_scale_bias, out_dtype);
  const int64_t tail = checks::int4::tail_bytes(half_scale_bias);
  const c10::cuda::CUDAGuard guard(packed.device());
  const int64_t rows = packed.size(0), width = packed.size(1);
  auto out = at::empty({rows, 2 * (width - tail)}, packed.options().dtype(out_dtype));
  if (rows == 0) return out;
  const at::Tensor pc = packed.stride(1) == 1 ? packed : packed.contiguous();
  check_launch(launch_int4_dequantize(pc.const_data_ptr<uint8_t>(), rows, width, pc.stride(0), half_scale_bias,
                                      out.mutable_data_ptr(), dtype_of(out_dtype), current_stream()),
               op);
  return out;
}

}  // namespace
}  // namespace dv365::cuda

TORCH_LIBRARY_IMPL(dv365, CUDA, m) {
  m.impl("int4_quantize", &dv365::cuda::int4_quantize_cuda);
  m.impl("int4_dequantize", &dv365::cuda::int4_dequantize_cuda);
}
