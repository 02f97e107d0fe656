// The `uberlm` binary end to end on the default model: `inspect` lists every tensor and checks their
// shapes, `run` generates text and reports its speed, `run --chat` renders the prompt with a chat
// template, `run --deterministic` on the CPU gives the same text, `eval ppl` reports truncation, and bad input (a FIFO in the model folder, a config that
// disagrees with the tensors) is a clear error with a non-zero exit.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "temp_path.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm {
namespace {

struct CommandResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};

// Bounded: a command that hangs (as one reading a FIFO once did) is killed after 120 s, exit code 124.
CommandResult run_uberlm(const std::string& arguments) {
  const std::string command = "timeout 120 " + std::string(UBERLM_BINARY) + " " + arguments + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  std::string output;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe.get())) > 0) output.append(buffer.data(), n);
  const int status = pclose(pipe.release());
  return {WEXITSTATUS(status), output};
}

const std::string kDefaultModel = std::string(UBERLM_SOURCE_DIR) + "/models/default";

TEST(Cli, InspectListsEveryTensorOfTheDefaultModel) {
  CommandResult result = run_uberlm("inspect --model " + kDefaultModel);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  auto checkpoint = Checkpoint::open(kDefaultModel);
  ASSERT_GT(checkpoint->names().size(), 50u);
  for (const std::string& name : checkpoint->names()) {
    EXPECT_NE(result.output.find(checkpoint->original_name(name)), std::string::npos) << name;
  }
  EXPECT_NE(result.output.find("qwen3_5_text"), std::string::npos);
  EXPECT_NE(result.output.find("LLLALLLA"), std::string::npos) << "layer kinds line";
}

// A model folder whose files link to the default model's, except those the test writes itself.
class ModelFolder {
 public:
  explicit ModelFolder(const std::string& name)
      : path_(std::filesystem::temp_directory_path() / fmt::format("uberlm_cli_{}_{}", name, ::getpid())) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
    for (const auto& item : std::filesystem::directory_iterator(kDefaultModel)) {
      std::filesystem::create_symlink(std::filesystem::absolute(item.path()), path_ / item.path().filename());
    }
  }
  ~ModelFolder() { std::filesystem::remove_all(path_); }
  void make_fifo(const std::string& file) {
    std::filesystem::remove(path_ / file);
    ASSERT_EQ(::mkfifo((path_ / file).c_str(), 0600), 0);
  }
  void write(const std::string& file, const std::string& content) {
    std::filesystem::remove(path_ / file);
    std::ofstream(path_ / file) << content;
  }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// A FIFO where a checkpoint file should be is an error naming it, not a hang (issue 19).
TEST(Cli, AFifoInTheModelFolderIsAnErrorNamingIt) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model-00002-of-00003.safetensors", "inspect"},
      {"model-00002-of-00003.safetensors", "run --prompt hi --max-tokens 1"},
      {"config.json", "inspect"},
      {"model.safetensors.index.json", "inspect"},
      {"generation_config.json", "run --prompt hi --max-tokens 1"},
      {"tokenizer.json", "run --prompt hi --max-tokens 1"},
  };
  for (const auto& [file, command] : cases) {
    ModelFolder folder("fifo");
    folder.make_fifo(file);
    const CommandResult result = run_uberlm(command + " --model " + folder.path());
    EXPECT_NE(result.exit_code, 0) << file << ", " << command << ": " << result.output;
    EXPECT_NE(result.exit_code, 124) << file << ", " << command << " hung";
    EXPECT_NE(result.output.find(file + ": not a regular file"), std::string::npos)
        << file << ", " << command << ": " << result.output;
  }
}

// inspect makes the load-time check: a config whose sizes disagree with the tensors is an error naming one.
TEST(Cli, InspectChecksTensorShapesAgainstTheConfig) {
  ModelFolder folder("shapes");
  std::ifstream config_file(kDefaultModel + "/config.json");
  nlohmann::json config = nlohmann::json::parse(config_file);
  config["intermediate_size"] = config["intermediate_size"].get<int>() + 16;
  folder.write("config.json", config.dump());
  const CommandResult result = run_uberlm("inspect --model " + folder.path());
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("tensors,"), std::string::npos) << "the listing comes first: " << result.output;
  EXPECT_NE(result.output.find("mlp."), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("has shape"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("expected"), std::string::npos) << result.output;
}

// eval ppl says when it cuts a document to --max-tokens-per-document, and counts the cut ones.
TEST(Cli, EvalPplSaysWhenItTruncates) {
  const CommandResult result = run_uberlm("eval ppl --model " + kDefaultModel + " --limit 2 --max-tokens-per-document 16");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("document 0 is"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("scoring its first 16 (--max-tokens-per-document)"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("\"truncated_documents\": 2"), std::string::npos) << result.output;
}

TEST(Cli, RunContinuesThePromptAndReportsSpeed) {
  CommandResult result = run_uberlm("run --model " + kDefaultModel + " --prompt 'Natalia sold clips to' --max-tokens 24");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_EQ(result.output.rfind("Natalia sold clips to", 0), 0u) << result.output;
  EXPECT_GT(result.output.size(), std::string("Natalia sold clips to").size() + 40) << result.output;
  EXPECT_NE(result.output.find("tok/s decode"), std::string::npos) << result.output;
}

// --deterministic selects the CUDA backend's batch-invariant kernels; the CPU backend is batch-invariant always,
// so there the flag is accepted and changes nothing.
TEST(Cli, RunDeterministicOnTheCpuGivesTheSameText) {
  const std::string run = "run --model " + kDefaultModel + " --device cpu --prompt 'Natalia sold clips to' --max-tokens 24";
  const CommandResult plain = run_uberlm(run), deterministic = run_uberlm(run + " --deterministic");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  ASSERT_EQ(deterministic.exit_code, 0) << deterministic.output;
  // The text, without the speed line that follows it ("[cpu] prompt N tokens (...)").
  const auto text = [](const std::string& output) { return output.substr(0, output.find("\n[cpu] prompt")); };
  EXPECT_GT(text(plain.output).size(), std::string("Natalia sold clips to").size() + 40) << plain.output;
  EXPECT_EQ(text(deterministic.output), text(plain.output));
}

TEST(Cli, RunChatUsesChatMlWithoutATemplateOrTheGivenTemplateFile) {
  // The default model ships no chat template: ChatML, and the log says so.
  CommandResult chatml = run_uberlm("run --model " + kDefaultModel + " --chat --prompt 'Natalia sold clips' --max-tokens 4");
  ASSERT_EQ(chatml.exit_code, 0) << chatml.output;
  EXPECT_NE(chatml.output.find("rendered as ChatML"), std::string::npos) << chatml.output;

  const std::filesystem::path file = process_temp_path("uberlm_cli_test_template.jinja");
  std::ofstream(file) << "Q: {{ messages[0].content }}\nA:";
  CommandResult custom = run_uberlm("run --model " + kDefaultModel + " --chat --chat-template " + file.string() +
                                    " --prompt 'Natalia sold clips' --max-tokens 4");
  std::filesystem::remove(file);
  ASSERT_EQ(custom.exit_code, 0) << custom.output;
  EXPECT_EQ(custom.output.find("ChatML"), std::string::npos) << custom.output;
  const auto tokenizer = BpeTokenizer::load(kDefaultModel + "/tokenizer.json");
  const size_t prompt_tokens = tokenizer->encode("Q: Natalia sold clips\nA:").size();
  EXPECT_NE(custom.output.find(fmt::format("prompt {} tokens", prompt_tokens)), std::string::npos) << custom.output;

  CommandResult without_chat = run_uberlm("run --model " + kDefaultModel + " --chat-template x.jinja --prompt hi");
  EXPECT_NE(without_chat.exit_code, 0);
  EXPECT_NE(without_chat.output.find("--chat-template needs --chat"), std::string::npos) << without_chat.output;
}

TEST(Cli, MissingModelIsAClearError) {
  CommandResult result = run_uberlm("run --model /nonexistent/model --prompt hi");
  EXPECT_NE(result.exit_code, 0);
  EXPECT_NE(result.output.find("/nonexistent/model"), std::string::npos) << result.output;
}

TEST(Cli, DecodePathIsCheckedAndFusedNeedsTheGpu) {
  CommandResult unknown = run_uberlm("run --model " + kDefaultModel + " --prompt hi --decode-path sideways");
  EXPECT_NE(unknown.exit_code, 0);
  EXPECT_NE(unknown.output.find("--decode-path"), std::string::npos) << unknown.output;
  CommandResult on_cpu = run_uberlm("run --model " + kDefaultModel + " --prompt hi --max-tokens 2 --device cpu "
                                    "--decode-path fused");
  EXPECT_NE(on_cpu.exit_code, 0);
  EXPECT_NE(on_cpu.output.find("--decode-path fused: the fused kernels run on the CUDA backend"), std::string::npos)
      << on_cpu.output;
  CommandResult auto_on_cpu = run_uberlm("run --model " + kDefaultModel + " --prompt hi --max-tokens 2 --device cpu "
                                         "--decode-path auto");
  EXPECT_EQ(auto_on_cpu.exit_code, 0) << auto_on_cpu.output;
}

TEST(Cli, ServeShapeNeedsATokenizerAndTheGpu) {
  CommandResult no_tokenizer = run_uberlm("serve --shape qwen3.5-27b --port 0");
  EXPECT_NE(no_tokenizer.exit_code, 0);
  EXPECT_NE(no_tokenizer.output.find("--tokenizer DIR is required"), std::string::npos) << no_tokenizer.output;
  CommandResult on_cpu = run_uberlm("serve --shape qwen3.5-27b --tokenizer " + kDefaultModel + " --device cpu --port 0");
  EXPECT_NE(on_cpu.exit_code, 0);
  EXPECT_NE(on_cpu.output.find("synthetic weights are made on the GPU"), std::string::npos) << on_cpu.output;
}

}  // namespace
}  // namespace uberlm
