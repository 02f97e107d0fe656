#include "model/model.h"

#include "model/gguf_model.h"

namespace uberlm {

std::unique_ptr<Model> Model::load(const std::filesystem::path& path) {
  if (is_gguf_path(path)) return load_gguf_model(path);
  auto model = std::make_unique<Model>();
  model->dir = path;
  model->config = load_model_config(path);
  model->checkpoint = Checkpoint::open(path);
  model->weights = load_model_weights(*model->checkpoint, model->config);
  model->stop_token_ids = load_stop_token_ids(path, model->config.vocab_size);
  return model;
}

}  // namespace uberlm
