// `eval gsm8k`: the answer scoring, the seeded draw the presets document, a run over a scripted
// completion source, and the in-process run on the default model through the CLI.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>

#include "eval/gsm8k.h"
#include "temp_path.h"

namespace uberlm {
namespace {

const std::string kTestData = std::string(UBERLM_DATA_DIR) + "/gsm8k/test.jsonl";

TEST(Gsm8k, AnswerNumberIsAfterTheMarkElseTheLastNumber) {
  EXPECT_EQ(gsm8k_answer_number("so 3 + 4 = 7\n#### 1,234.50 dollars"), "1234.5");
  EXPECT_EQ(gsm8k_answer_number("She has 3 apples, then 12."), "12");
  EXPECT_EQ(gsm8k_answer_number("#### -0.0"), "0");
  EXPECT_EQ(gsm8k_answer_number("no number here"), "");
}

TEST(Gsm8k, SeedFortyTwoDrawsTheDocumentedPresetQuestions) {
  // data/gsm8k/README.md lists these as the `--preset sanity` questions.
  EXPECT_EQ(draw_gsm8k_questions(1319, 8, 42), (std::vector<int>{175, 1165, 1224, 1281, 25, 361, 230, 1095}));
  const std::vector<int> gate = draw_gsm8k_questions(1319, 50, 42);
  ASSERT_EQ(gate.size(), 50u);
  EXPECT_EQ(std::vector<int>(gate.begin(), gate.begin() + 8), draw_gsm8k_questions(1319, 8, 42));
  EXPECT_EQ(gate.back(), 17);
}

TEST(Gsm8k, RunScoresEachAnswerAndCountsFailures) {
  const std::vector<Gsm8kQuestion> questions = read_gsm8k_questions(kTestData);
  ASSERT_EQ(questions.size(), 1319u);
  // Right answers for questions with an even row, a wrong one for odd rows; row 25 fails.
  const CompletionSource source = [&](const std::string& prompt, int max_tokens) {
    EXPECT_EQ(max_tokens, 32);
    for (const Gsm8kQuestion& q : questions) {
      if (gsm8k_prompt(q.question) != prompt) continue;
      if (q.index == 25) return Completion{"", 0, "scripted failure"};
      return Completion{q.index % 2 == 0 ? "#### " + q.gold : "#### -1", 5, ""};
    }
    ADD_FAILURE() << "prompt of no question: " << prompt;
    return Completion{};
  };
  Gsm8kRunOptions options{.data = kTestData, .n = 8, .seed = 42, .concurrency = 3, .max_tokens = 32};
  const nlohmann::json report = run_gsm8k(options, source, {{"model", "scripted"}});
  EXPECT_EQ(report["model"], "scripted");
  EXPECT_EQ(report["question_indices"], nlohmann::json({175, 1165, 1224, 1281, 25, 361, 230, 1095}));
  EXPECT_EQ(report["correct"], 2);  // rows 1224 and 230
  EXPECT_EQ(report["errors"], 1);
  EXPECT_EQ(report["completion_tokens"], 7 * 5);
  EXPECT_DOUBLE_EQ(report["accuracy"].get<double>(), 2.0 / 8.0);
  EXPECT_EQ(report["questions"][4]["error"], "scripted failure");
}

TEST(Gsm8k, SanityPresetRunsInProcessOnTheDefaultModel) {
  const std::filesystem::path report_path = process_temp_path("uberlm_gsm8k_sanity.json");
  const std::string command = std::string(UBERLM_BINARY) + " eval gsm8k --preset sanity --device cpu --max-tokens 48 --json " +
                              report_path.string() + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  std::string output;
  std::array<char, 4096> buffer;
  for (size_t n; (n = fread(buffer.data(), 1, buffer.size(), pipe.get())) > 0;) output.append(buffer.data(), n);
  ASSERT_EQ(WEXITSTATUS(pclose(pipe.release())), 0) << output;
  EXPECT_NE(output.find("gsm8k: accuracy"), std::string::npos) << output;
  const nlohmann::json report = nlohmann::json::parse(std::ifstream(report_path));
  EXPECT_EQ(report["n"], 8);
  EXPECT_EQ(report["errors"], 0);
  EXPECT_EQ(report["backend"], "cpu");
  for (const nlohmann::json& row : report["questions"]) {
    EXPECT_GT(row["completion_tokens"].get<int>(), 0);
    EXPECT_FALSE(row["text"].get<std::string>().empty());
  }
  std::filesystem::remove(report_path);
}

}  // namespace
}  // namespace uberlm
