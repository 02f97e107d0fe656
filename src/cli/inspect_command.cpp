// `uberlm inspect`: the config, the layer kinds and every tensor of a checkpoint, then the check that
// every tensor the config implies is there with its shape (the check `run` and `serve` make at load).
#include <cstdio>

#include <fmt/format.h>

#include "cli/commands.h"
#include "io/checkpoint.h"
#include "model/config.h"
#include "model/weights.h"

namespace uberlm::cli {

namespace {

void print_config(const ModelConfig& c) {
  fmt::print("model_type           {}\n", c.model_type);
  fmt::print("hidden_size          {}\n", c.hidden_size);
  fmt::print("layers               {} ({} full attention, {} Gated DeltaNet)\n", c.num_layers,
             c.num_layers_of(LayerKind::FullAttention), c.num_layers_of(LayerKind::GatedDeltaNet));
  fmt::print("intermediate_size    {}\n", c.intermediate_size);
  fmt::print("vocab_size           {}\n", c.vocab_size);
  fmt::print("attention            {} heads, {} kv heads, head_dim {}, rotary_dim {}, theta {}\n", c.num_heads,
             c.num_kv_heads, c.head_dim, c.rotary_dim, c.rope_theta);
  fmt::print("flags                qk_norm={} output_gate={} qkv_bias={} norm={} tied_embeddings={}\n", c.qk_norm,
             c.attn_output_gate, c.qkv_bias, c.norm_style == NormStyle::OnePlusWeight ? "1+w" : "w",
             c.tie_word_embeddings);
  if (c.delta_net_num_value_heads > 0) {
    fmt::print("gated deltanet       {} key heads x {}, {} value heads x {}, conv kernel {}\n",
               c.delta_net_num_key_heads, c.delta_net_key_head_dim, c.delta_net_num_value_heads, c.delta_net_value_head_dim,
               c.delta_net_conv_kernel);
  }
  std::string kinds;
  for (LayerKind kind : c.layer_kinds) kinds += kind == LayerKind::FullAttention ? 'A' : 'L';
  fmt::print("layer kinds          {}   (A = full attention, L = linear attention)\n", kinds);
}

void inspect(const std::string& dir) {
  ModelConfig config = load_model_config(dir);
  auto checkpoint = Checkpoint::open(dir);
  print_config(config);
  fmt::print("\n{:<60} {:<8} {:<20} {:>12}\n", "tensor", "dtype", "shape", "bytes");
  size_t total = 0;
  for (const std::string& name : checkpoint->names()) {
    TensorView view = checkpoint->get(name);
    fmt::print("{:<60} {:<8} {:<20} {:>12}\n", checkpoint->original_name(name), dtype_name(view.dtype),
               shape_string(view.shape), view.nbytes());
    total += view.nbytes();
  }
  fmt::print("{} tensors, {:.2f} MiB\n", checkpoint->names().size(), total / 1048576.0);
  std::fflush(stdout);  // the listing stays ahead of a shape error on stderr
  load_model_weights(*checkpoint, config);
  fmt::print("every tensor the config implies is present with its shape\n");
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  auto dir = std::make_shared<std::string>(default_model_dir());
  CLI::App* cmd = app.add_subcommand("inspect", "Print a checkpoint's config, layer kinds and tensors");
  cmd->add_option("--model", *dir, "Checkpoint directory")->capture_default_str();
  cmd->callback([dir] { inspect(*dir); });
}

}  // namespace uberlm::cli
