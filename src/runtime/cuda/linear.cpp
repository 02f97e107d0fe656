#include "runtime/cuda/linear.h"

#include <vector>

#include "core/error.h"
#include "ops/cuda/activation.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemv.h"

namespace uberlm::gpu {

LinearRunner::LinearRunner(cudaStream_t stream, bool large_m)
    : stream_(stream), gemm_(large_m ? std::make_unique<cuda::Gemm>(stream) : nullptr) {}

void LinearRunner::set_gemm_memory(uint16_t* scratch, int64_t scratch_elements, uint8_t* workspace) {
  gemm_scratch_ = scratch;
  gemm_scratch_elements_ = scratch_elements;
  if (gemm_) gemm_->set_workspace(workspace, cuda::kGemmWorkspaceBytes);
}

void LinearRunner::linear(const DeviceLinear& w, const uint16_t* x, int64_t rows, float* y) {
  if (rows == 0) return;
  if (rows <= cuda::kGemvMaxM) {
    ++counters_.gemv_linear_calls;
    if (w.nvfp4) cuda::gemv_nvfp4(w.nvfp4_view(), x, rows, y, DType::F32, stream_);
    else cuda::gemv_bf16(w.bf16, w.out, w.in_padded, x, rows, y, DType::F32, stream_);
  } else {
    if (!gemm_) fail("CudaBackend: {} rows for {} exceed the GEMV's {} and no cuBLAS path was planned", rows, w.name,
                     cuda::kGemvMaxM);
    if (w.nvfp4) {
      ++counters_.gemm_nvfp4_linear_calls;
      gemm_->nvfp4(w.nvfp4_view(), gemm_scratch_, gemm_scratch_elements_, x, rows, y);
    } else {
      ++counters_.gemm_bf16_linear_calls;
      gemm_->bf16(w.bf16, w.out, w.in_padded, x, rows, y);
    }
  }
  if (w.bias) CUDA_CHECK(cuda::launch_add_bias(y, w.bias, rows, w.out, stream_));
}

void LinearRunner::group(std::initializer_list<Output> outputs, const uint16_t* x, int64_t rows) {
  const bool nvfp4 = outputs.begin()->weight->nvfp4;
  bool shared = rows <= cuda::kGemvMaxM && static_cast<int>(outputs.size()) <= cuda::kGemvMaxTargets;
  for (const Output& o : outputs) shared = shared && o.weight->nvfp4 == nvfp4;
  if (!shared) {
    for (const Output& o : outputs) linear(*o.weight, x, rows, o.y);
    return;
  }
  counters_.gemv_linear_calls += static_cast<int64_t>(outputs.size());
  std::vector<cuda::Nvfp4GemvTarget> nvfp4_targets;
  std::vector<cuda::Bf16GemvTarget> bf16_targets;
  for (const Output& o : outputs) {
    if (nvfp4) nvfp4_targets.push_back({o.weight->nvfp4_view(), o.y});
    else bf16_targets.push_back({o.weight->bf16, o.weight->out, o.y});
  }
  const int count = static_cast<int>(outputs.size());
  if (nvfp4) {
    cuda::gemv_nvfp4_multi(nvfp4_targets.data(), count, x, rows, DType::F32, stream_);
  } else {
    cuda::gemv_bf16_multi(bf16_targets.data(), count, outputs.begin()->weight->in_padded, x, rows, DType::F32, stream_);
  }
  for (const Output& o : outputs) {
    if (o.weight->bias) CUDA_CHECK(cuda::launch_add_bias(o.y, o.weight->bias, rows, o.weight->out, stream_));
  }
}

// The paired kernel takes one weight format and no bias term, at the GEMV's row counts.
bool LinearRunner::fuses_swiglu(const DeviceLinear& gate, const DeviceLinear& up, int64_t rows) const {
  return rows <= cuda::kGemvMaxM && gate.nvfp4 == up.nvfp4 && !gate.bias && !up.bias;
}

void LinearRunner::gate_up_swiglu(const DeviceLinear& gate, const DeviceLinear& up, const uint16_t* x, int64_t rows,
                                  uint16_t* out, int64_t out_stride) {
  counters_.gemv_linear_calls += 2;
  ++counters_.gemv_swiglu_calls;
  if (gate.nvfp4) {
    cuda::gemv_nvfp4_swiglu(gate.nvfp4_view(), up.nvfp4_view(), x, rows, out, out_stride, stream_);
  } else {
    cuda::gemv_bf16_swiglu(gate.bf16, up.bf16, gate.out, gate.in_padded, x, rows, out, out_stride, stream_);
  }
}

}  // namespace uberlm::gpu
