#include "model/model.h"

namespace uberlm {

std::unique_ptr<Model> Model::load(const std::filesystem::path& dir) {
  auto model = std::make_unique<Model>();
  model->dir = dir;
  model->config = load_model_config(dir);
  model->checkpoint = Checkpoint::open(dir);
  model->weights = load_model_weights(*model->checkpoint, model->config);
  model->stop_token_ids = load_stop_token_ids(dir);
  return model;
}

}  // namespace uberlm
