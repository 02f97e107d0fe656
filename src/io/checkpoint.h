#pragma once
// A Hugging Face checkpoint directory: config.json plus one model.safetensors, or shards listed in
// model.safetensors.index.json, or (as vLLM accepts) several *.safetensors without an index. Tensor names are canonicalised: the `model.language_model.` and
// `model.` prefixes are dropped (so "layers.3.mlp.up_proj.weight", "embed_tokens.weight",
// "norm.weight", "lm_head.weight"); `model.visual.*` and `mtp.*` tensors are skipped.
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace uberlm {

class Checkpoint {
 public:
  // Throws Error naming the directory, index or shard at fault (a shard named in the index but
  // absent, a tensor the index places in a shard that lacks it, ...).
  static std::unique_ptr<Checkpoint> open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  bool has(const std::string& canonical_name) const { return index_.count(canonical_name) != 0; }
  // Throws Error "checkpoint DIR: missing tensor NAME" when absent.
  TensorView get(const std::string& canonical_name) const;
  // The checkpoint's own name of a canonical name and the file holding it, for error messages and
  // `inspect`. Both throw like get() when the name is absent.
  std::string original_name(const std::string& canonical_name) const;
  const std::filesystem::path& file_of(const std::string& canonical_name) const;
  std::vector<std::string> names() const;  // canonical names, sorted

  // Returns "" for skipped names (visual, mtp), else the canonical name.
  static std::string canonical_name(const std::string& original);

 private:
  struct Location {
    const SafetensorsFile* file;
    std::string original;
  };
  const Location& locate(const std::string& canonical_name) const;  // throws when absent
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Location> index_;
};

}  // namespace uberlm
