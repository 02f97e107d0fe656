#include "io/checkpoint.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/regular_file.h"

namespace uberlm {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// weight_map of model.safetensors.index.json: original tensor name -> shard file name.
std::map<std::string, std::string> read_weight_map(const fs::path& index_path) {
  const std::string index = index_path.string();
  require_regular_file(index_path);
  std::ifstream stream(index_path, std::ios::binary);
  if (!stream) fail("checkpoint index {}: cannot open", index);
  std::stringstream text;
  text << stream.rdbuf();
  json root;
  try {
    root = json::parse(text.str());
  } catch (const json::exception& error) {
    fail("checkpoint index {}: invalid JSON: {}", index, error.what());
  }
  if (!root.is_object() || !root.contains("weight_map") || !root["weight_map"].is_object()) {
    fail("checkpoint index {}: needs a 'weight_map' object of tensor name -> shard file", index);
  }
  std::map<std::string, std::string> weight_map;
  const json& entries = root["weight_map"];
  for (auto it = entries.begin(); it != entries.end(); ++it) {
    // Shards live beside the index: a bare file name, never a path that could leave the folder.
    if (!it->is_string() || it->get<std::string>().empty() ||
        fs::path(it->get<std::string>()).filename() != fs::path(it->get<std::string>()) ||
        it->get<std::string>() == "." || it->get<std::string>() == "..") {
      fail("checkpoint index {}: weight_map entry '{}' must name a shard file in the same folder", index, it.key());
    }
    weight_map[it.key()] = it->get<std::string>();
  }
  return weight_map;
}

// Every *.safetensors file of the folder, sorted by name.
std::vector<fs::path> list_safetensors(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& item : fs::directory_iterator(dir)) {
    if (item.is_regular_file() && item.path().extension() == ".safetensors") files.push_back(item.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

bool starts_with(std::string_view text, std::string_view prefix) { return text.substr(0, prefix.size()) == prefix; }

}  // namespace

std::string Checkpoint::canonical_name(const std::string& original) {
  for (std::string_view skipped : {"model.visual.", "visual.", "mtp.", "model.mtp."}) {
    if (starts_with(original, skipped)) return "";
  }
  for (std::string_view prefix : {"model.language_model.", "model."}) {
    if (starts_with(original, prefix)) return original.substr(prefix.size());
  }
  return original;
}

std::unique_ptr<Checkpoint> Checkpoint::open(const fs::path& dir) {
  std::error_code error;
  if (!fs::is_directory(dir, error)) fail("checkpoint {}: not a directory", dir.string());
  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint());
  checkpoint->dir_ = dir;

  // Which files hold the weights: the single file, else the index's shards, else every
  // *.safetensors of the folder.
  const fs::path index_path = dir / kIndexFile;
  std::map<std::string, std::string> weight_map;
  std::vector<fs::path> files;
  if (fs::exists(dir / kSingleFile)) {
    files.push_back(dir / kSingleFile);
  } else if (fs::exists(index_path)) {
    weight_map = read_weight_map(index_path);
    std::set<std::string> shards;
    for (const auto& [name, shard] : weight_map) shards.insert(shard);
    for (const auto& shard : shards) {
      if (!fs::exists(dir / shard)) {
        fail("checkpoint index {}: shard {} is named in the index but absent", index_path.string(), shard);
      }
      files.push_back(dir / shard);
    }
  } else {
    files = list_safetensors(dir);
  }
  if (files.empty()) fail("checkpoint {}: no {}, {} or *.safetensors file", dir.string(), kSingleFile, kIndexFile);

  std::map<std::string, const SafetensorsFile*> owner;  // original name -> the file holding it
  for (const auto& path : files) {
    checkpoint->files_.push_back(SafetensorsFile::open(path));
    const SafetensorsFile* file = checkpoint->files_.back().get();
    for (const auto& [name, entry] : file->header().tensors) {
      auto [it, inserted] = owner.emplace(name, file);
      if (!inserted) {
        fail("checkpoint {}: tensor '{}' is in two shards, {} and {}", dir.string(), name, it->second->path().string(),
             path.string());
      }
    }
  }
  for (const auto& [name, shard] : weight_map) {
    auto it = owner.find(name);
    if (it == owner.end() || it->second->path().filename() != shard) {
      fail("checkpoint index {}: tensor '{}' is listed in shard {} but that shard lacks it", index_path.string(), name,
           shard);
    }
  }

  for (const auto& [original, file] : owner) {
    std::string canonical = canonical_name(original);
    if (canonical.empty()) continue;
    auto [it, inserted] = checkpoint->index_.emplace(canonical, Location{file, original});
    if (!inserted) {
      fail("checkpoint {}: tensors '{}' and '{}' both map to '{}'", dir.string(), it->second.original, original,
           canonical);
    }
  }
  return checkpoint;
}

const Checkpoint::Location& Checkpoint::locate(const std::string& canonical_name) const {
  auto it = index_.find(canonical_name);
  if (it == index_.end()) fail("checkpoint {}: missing tensor {}", dir_.string(), canonical_name);
  return it->second;
}

TensorView Checkpoint::get(const std::string& canonical_name) const {
  const Location& location = locate(canonical_name);
  return location.file->view(location.original);
}

std::string Checkpoint::original_name(const std::string& canonical_name) const {
  return locate(canonical_name).original;
}

const fs::path& Checkpoint::file_of(const std::string& canonical_name) const {
  return locate(canonical_name).file->path();
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> names;
  for (const auto& [name, location] : index_) names.push_back(name);
  return names;
}

}  // namespace uberlm
