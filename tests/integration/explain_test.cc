// `fedmoe-client model explain` as a real process, and its page in a real browser (issue
// [serve]): Debian's headless Chromium opens the page from disk, runs its script, and the
// rendered DOM is checked against the explanation computed here in-process, including the heat
// map's selection from the page's address; a screenshot is taken. Where Chromium is not installed
// (deploy/install-deps.sh installs it), the browser checks skip and say so.
#include "model/explain.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/checkpoint.h"
#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kModelConfig[] = R"({
  "model_type": "mixtral", "hidden_size": 64, "intermediate_size": 96,
  "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
  "num_local_experts": 6, "num_experts_per_tok": 2, "rms_norm_eps": 1e-5,
  "rope_theta": 10000.0, "vocab_size": 256, "max_position_embeddings": 2048,
  "hidden_act": "silu", "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2
})";

constexpr char kText[] = "Urgent transfer requested after a login from another city <b>&";

std::string Chromium() {
  for (const char* candidate : {"/usr/bin/chromium", "/usr/bin/chromium-browser"}) {
    if (access(candidate, X_OK) == 0) return candidate;
  }
  return "";
}

// The first capture of `pattern` in `text` at each match.
std::vector<std::string> AllOf(const std::string& text, const std::string& pattern) {
  std::vector<std::string> found;
  const std::regex expression(pattern);
  for (auto it = std::sregex_iterator(text.begin(), text.end(), expression);
       it != std::sregex_iterator(); ++it) {
    found.push_back((*it)[1].str());
  }
  return found;
}

class ExplainTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    directory_ = new TempDir();
    const CommandResult init = InitModel(directory_->path(), kModelConfig, 7);
    ASSERT_EQ(init.exit_code, 0) << init.err;
  }
  static void TearDownTestSuite() { delete directory_; }

  static std::string model_dir() { return (directory_->path() / "model").string(); }
  static std::filesystem::path path(const std::string& name) { return directory_->path() / name; }

  // Runs the browser headless on the page with a profile of its own; its stdout is what it was
  // asked to print.
  static CommandResult Browse(const std::string& chromium, const std::vector<std::string>& what,
                              const std::string& address) {
    std::vector<std::string> argv = {chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                     "--no-first-run", "--hide-scrollbars",
                                     // Containers often give /dev/shm 64 MB, which a renderer
                                     // can outgrow.
                                     "--disable-dev-shm-usage",
                                     "--user-data-dir=" + path("profile").string()};
    argv.insert(argv.end(), what.begin(), what.end());
    argv.push_back(address);
    return RunCommand(argv, absl::Seconds(120));
  }

  static TempDir* directory_;
};

TempDir* ExplainTest::directory_ = nullptr;

TEST_F(ExplainTest, TheRenderedPageShowsWhatTheModelDid) {
  const std::string page = path("report.html").string();
  const CommandResult run =
      RunCommand({BinaryPath("fedmoe-client"), "model", "explain", "--model", model_dir(), "--text",
                  kText, "--out", page, "--threads", "2"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json summary = nlohmann::json::parse(run.out);
  const std::string text = kText;
  EXPECT_EQ(summary["tokens"], text.size());  // the byte tokenizer
  EXPECT_EQ(summary["out"], page);
  ASSERT_EQ(summary["top_attributions"].size(), 5U);
  struct stat info {};
  ASSERT_EQ(stat(page.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600) << "the page holds the text";

  // The explanation the page must show, computed here from the same checkpoint.
  absl::StatusOr<model::ModelParameters> parameters = model::LoadModel(model_dir());
  ASSERT_TRUE(parameters.ok()) << parameters.status();
  const std::vector<int32_t> tokens(text.begin(), text.end());
  absl::StatusOr<model::Explanation> reference = model::Explain(*parameters, tokens, std::nullopt);
  ASSERT_TRUE(reference.ok()) << reference.status();
  EXPECT_NEAR(summary["target_probability"].get<double>(), reference->target_probability, 1e-6);
  EXPECT_EQ(summary["top_attributions"][0]["index"], reference->StrongestAttributions(1)[0]);

  const std::string chromium = Chromium();
  if (chromium.empty()) {
    GTEST_SKIP() << "Chromium is not installed (deploy/install-deps.sh installs it); the page "
                    "was written and checked, not rendered";
  }
  const int64_t layer = 2, head = 3, query = 20;
  const CommandResult dom =
      Browse(chromium, {"--dump-dom"},
             absl::StrCat("file://", page, "#layer=", layer, "&head=", head, "&query=", query));
  ASSERT_EQ(dom.exit_code, 0) << dom.err;
  const std::string& html = dom.out;
  // The script ran to its end and drew the selection the address asked for.
  EXPECT_THAT(html, HasSubstr("<body data-ready=\"true\">"));
  EXPECT_THAT(html, HasSubstr(absl::StrCat("data-layer=\"", layer, "\" data-head=\"", head,
                                           "\" data-query=\"", query, "\"")));
  const int64_t length = static_cast<int64_t>(tokens.size());
  EXPECT_EQ(AllOf(html, R"re(<option value="(\d+)">layer )re").size(), 3U);
  EXPECT_EQ(AllOf(html, R"re(<option value="(\d+)">head )re").size(), 4U);
  EXPECT_EQ(AllOf(html, R"re(<option value="(\d+)">\d+: )re").size(), static_cast<size_t>(length));

  // What the outlined query attends to most, as the page lists it: the reference's row, one
  // byte per probability.
  std::vector<std::pair<int, int64_t>> row;
  for (int64_t k = 0; k <= query; ++k) {
    const float p = reference->Attention(layer, head, query, k);
    row.emplace_back(static_cast<int>(std::lround(p * 255.0f)), k);
  }
  std::stable_sort(row.begin(), row.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  const std::vector<std::string> keys = AllOf(html, R"re(<li data-key="(\d+)")re");
  const std::vector<std::string> shown = AllOf(html, R"re(data-probability="([0-9.]+)")re");
  ASSERT_EQ(keys.size(), 5U) << html;
  ASSERT_EQ(shown.size(), 5U);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(keys[i], std::to_string(row[i].second)) << "rank " << i;
    EXPECT_NEAR(std::stod(shown[i]), row[i].first / 255.0, 5e-4) << "rank " << i;
  }

  // The attribution over the text, token by token, and the routing table's cells.
  const std::vector<std::string> attributions = AllOf(html, R"re(data-attribution="([^"]+)")re");
  ASSERT_EQ(attributions.size(), tokens.size());
  for (size_t t = 0; t < tokens.size(); ++t) {
    EXPECT_NEAR(std::stod(attributions[t]), reference->attribution[t],
                1e-5 * (1 + std::abs(reference->attribution[t])))
        << "token " << t;
  }
  const std::vector<std::string> routed = AllOf(html, R"re(data-experts="([0-9,]+)")re");
  ASSERT_EQ(routed.size(), tokens.size() * 3);
  const size_t k = static_cast<size_t>(reference->top_k);
  for (size_t t = 0; t < tokens.size(); ++t) {
    for (size_t l = 0; l < 3; ++l) {
      const size_t first = (l * tokens.size() + t) * k;
      EXPECT_EQ(routed[t * 3 + l], absl::StrCat(reference->expert_index[first], ",",
                                                reference->expert_index[first + 1]));
    }
  }
  // The text's markup characters came through as text.
  EXPECT_THAT(html, HasSubstr(">&lt;</span><span"));
  EXPECT_THAT(html, HasSubstr(">&amp;</span>"));

  // A screenshot of the rendered page: a PNG of the asked size.
  const std::filesystem::path shot = path("report.png");
  const CommandResult screenshot = Browse(
      chromium, {"--screenshot=" + shot.string(), "--window-size=1280,2400"}, "file://" + page);
  ASSERT_EQ(screenshot.exit_code, 0) << screenshot.err;
  const std::string png = ReadFile(shot);
  ASSERT_GT(png.size(), 24U);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  const auto big_endian = [&](size_t at) {
    return (static_cast<uint32_t>(static_cast<unsigned char>(png[at])) << 24) |
           (static_cast<uint32_t>(static_cast<unsigned char>(png[at + 1])) << 16) |
           (static_cast<uint32_t>(static_cast<unsigned char>(png[at + 2])) << 8) |
           static_cast<uint32_t>(static_cast<unsigned char>(png[at + 3]));
  };
  EXPECT_EQ(big_endian(16), 1280U);
  EXPECT_EQ(big_endian(20), 2400U);
  // A blank page of this size compresses to a few kilobytes; text, colours and the heat map do
  // not.
  EXPECT_GT(png.size(), 40000U);
}

TEST_F(ExplainTest, HoldsTheBaseAsAskedAndExplainsAChosenTarget) {
  const std::string page = path("int8.html").string();
  const CommandResult run =
      RunCommand({BinaryPath("fedmoe-client"), "model", "explain", "--model", model_dir(), "--text",
                  "a login from another", "--target", " city", "--int8", "--out", page});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const nlohmann::json summary = nlohmann::json::parse(run.out);
  EXPECT_EQ(summary["target"], " ");
  EXPECT_THAT(ReadFile(page), HasSubstr("weights held as int8"));
}

// An adapter is explained as the model it makes: the same page numbers as explaining the plain
// checkpoint `model merge-adapter` writes, and not the base's.
TEST_F(ExplainTest, AnAdaptedModelIsExplainedAsItsMergedCheckpoint) {
  const std::filesystem::path corpus = path("corpus");
  std::filesystem::create_directories(corpus);
  std::string text;
  for (int i = 0; i < 100; ++i) text += "Transfer " + std::to_string(100 + i % 17) + " flagged.\n";
  WriteFile(corpus / "alerts.txt", text);
  const std::string adapter = path("adapter").string();
  const std::string client = BinaryPath("fedmoe-client");
  const CommandResult train =
      RunCommand({client, "train", "--model", model_dir(), "--data", corpus.string(), "--steps",
                  "8", "--out", adapter, "--lora", "--batch-size", "4", "--seq-len", "32", "--lr",
                  "0.05", "--threads", "2"});
  ASSERT_EQ(train.exit_code, 0) << train.err;
  const std::string merged = path("merged").string();
  const CommandResult merge = RunCommand({client, "model", "merge-adapter", "--model", model_dir(),
                                          "--adapter", adapter, "--out", merged});
  ASSERT_EQ(merge.exit_code, 0) << merge.err;

  const auto explain = [&](const std::vector<std::string>& model_flags) {
    std::vector<std::string> argv = {client,     "model",        "explain",
                                     "--text",   "Transfer 105", "--target",
                                     " flagged", "--out",        path("adapted.html").string()};
    argv.insert(argv.end(), model_flags.begin(), model_flags.end());
    const CommandResult result = RunCommand(argv);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    return nlohmann::json::parse(result.out);
  };
  const nlohmann::json adapted = explain({"--model", model_dir(), "--adapter", adapter});
  const nlohmann::json plain = explain({"--model", merged});
  const nlohmann::json base = explain({"--model", model_dir()});
  EXPECT_NEAR(adapted["target_probability"].get<double>(),
              plain["target_probability"].get<double>(), 1e-5);
  EXPECT_GT(std::abs(adapted["target_probability"].get<double>() -
                     base["target_probability"].get<double>()),
            1e-4)
      << "the adapter changed nothing";
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(adapted["top_attributions"][i]["index"], plain["top_attributions"][i]["index"]);
    EXPECT_NEAR(adapted["top_attributions"][i]["attribution"].get<double>(),
                plain["top_attributions"][i]["attribution"].get<double>(), 1e-4);
  }
}

TEST_F(ExplainTest, RefusesBadRequestsWithOneSpecificLine) {
  const std::string page = path("refused.html").string();
  const std::string explain = BinaryPath("fedmoe-client");
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--model", model_dir(), "--out", page}, "give the text as --text TEXT or --text-file FILE"},
      {{"--model", model_dir(), "--out", page, "--text", "a", "--text-file", "f"},
       "give the text as --text TEXT or --text-file FILE"},
      {{"--model", model_dir(), "--out", page, "--text-file", path("absent").string()},
       "cannot read it"},
      {{"--model", model_dir(), "--out", page, "--text", ""}, "the text to explain has no tokens"},
      {{"--model", model_dir(), "--out", page, "--text", "abc", "--target", ""},
       "--target is empty"},
      {{"--model", model_dir(), "--out", page, "--text", std::string(1025, 'a')},
       "the text is 1025 tokens; model explain takes at most 1024"},
      {{"--model", path("absent").string(), "--out", page, "--text", "a"}, "config.json"},
      {{"--model", model_dir(), "--text", "a"}, "--out"},
      {{"--model", model_dir(), "--out", page, "--text", "a", "--int8", "--bf16"},
       "--int8 and --bf16 exclude each other"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {explain, "model", "explain"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    const CommandResult result = RunCommand(argv);
    EXPECT_NE(result.exit_code, 0) << c.message;
    EXPECT_THAT(result.err, HasSubstr(c.message));
    EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
  }
  EXPECT_FALSE(std::filesystem::exists(page)) << "a refused run writes no page";
}

}  // namespace
}  // namespace fedmoe::testing
