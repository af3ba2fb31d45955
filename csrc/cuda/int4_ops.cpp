// CUDA host side of the int4 rowwise codes (kernels: csrc/cuda/int4.cu): checks with the CPU kernel's
// messages, allocation, the launches on the current stream and the non-finite-input flag.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cuda/host.h"
#include "cuda/int4.h"

namespace dv365::cuda {
namespace {

at::Tensor int4_quantize_cuda(const at::Tensor& x, bool half_scale_bias) {
  constexpr const char* op = "int4_quantize";
  auto rerun = [&] { rerun_on_cpu<at::Tensor(const at::Tensor&, bool)>("dv365::int4_quantize", x.cpu(), half_scale_bias); };
  check_like_cpu([&] {
    DV365_CHECK(x.dim() == 2, op, "x must be 2-D [R, D], got shape ", x.sizes());
    DV365_CHECK(x.size(1) % 2 == 0, op, "x must have an even number of columns D, got ", x.size(1));
    DV365_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, op,
                "x must be float32, bfloat16 or float16, got ", x.scalar_type());
  }, rerun);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), d = x.size(1);
  const int64_t width = d / 2 + (half_scale_bias ? 4 : 8);
  auto out = at::empty({rows, width}, x.options().dtype(at::kByte));
  if (rows == 0) return out;
  const at::Tensor xc = x.stride(1) == 1 ? x : x.contiguous();
  auto flag = new_error_flag(x);
  check_launch(launch_int4_quantize(xc.const_data_ptr(), dtype_of(x.scalar_type()), rows, d, xc.stride(0),
                                    half_scale_bias, out.mutable_data_ptr<uint8_t>(), width,
                                    flag.mutable_data_ptr<int32_t>(), current_stream()),
               op);
  check_error_flag(flag, op, rerun);
  return out;
}

at::Tensor int4_dequantize_cuda(const at::Tensor& packed, bool half_scale_bias, std::optional<at::ScalarType> dtype) {
  constexpr const char* op = "int4_dequantize";
  const int64_t tail = half_scale_bias ? 4 : 8;
  const auto out_dtype = dtype.value_or(at::kFloat);
  check_like_cpu([&] {
    DV365_CHECK(packed.dim() == 2, op, "packed must be 2-D [R, D/2 + ", tail, "], got shape ", packed.sizes());
    DV365_CHECK(packed.scalar_type() == at::kByte, op, "packed must be uint8, got ", packed.scalar_type());
    DV365_CHECK(packed.size(1) >= tail, op, "packed must have D/2 code bytes plus ", tail, " bytes of scale and bias");
    DV365_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf, op,
                "dtype must be float32, bfloat16 or float16, got ", out_dtype);
  }, [&] {
    rerun_on_cpu<at::Tensor(const at::Tensor&, bool, std::optional<at::ScalarType>)>("dv365::int4_dequantize",
                                                                                     packed.cpu(), half_scale_bias, dtype);
  });
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
