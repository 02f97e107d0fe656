#pragma once
// The planted fault of the `check` tests: one element of layer `layer`'s down projection moved far from its
// value (+8 where the weights are ~0.05: at the prefill it moves the residual stream by well over the GPU
// path's 3e-2 bound), in an fp32 copy the model owns (so only the model it is planted in differs).
#include <vector>

#include "model/model.h"

namespace uberlm {

inline void plant_fault(Model& model, int layer) {
  LinearWeight& down = model.weights.layers.at(layer).mlp.down_proj;
  std::vector<float> values = to_f32(down.weight);
  values[values.size() / 3] += 8.0f;
  model.owned_tensors.push_back(std::move(values));
  down.weight = TensorView{DType::F32, down.weight.shape, model.owned_tensors.back().data()};
}

}  // namespace uberlm
