#include "model/data.h"

#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/process_harness.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::model {
namespace {

using ::testing::HasSubstr;
constexpr int32_t kEos = 256;

struct Collected {
  std::vector<Batch> batches;
  std::vector<std::string> warnings;
  DataCounts counts;
};

Collected ReadAll(const std::filesystem::path& dir, Split split, DataOptions options,
                  int64_t max_batches = 1000) {
  static const auto tokenizer = MakeByteTokenizer(258);
  Collected collected;
  options.eos_token = kEos;
  options.warn = [&collected](std::string_view warning) {
    collected.warnings.emplace_back(warning);
  };
  absl::StatusOr<std::unique_ptr<DataStream>> stream =
      DataStream::Open(dir, *tokenizer, split, options);
  EXPECT_TRUE(stream.ok()) << stream.status();
  if (!stream.ok()) return collected;
  Batch batch;
  for (int64_t i = 0; i < max_batches; ++i) {
    absl::StatusOr<bool> more = (*stream)->Next(batch);
    EXPECT_TRUE(more.ok()) << more.status();
    if (!more.ok() || !*more) break;
    collected.batches.push_back(batch);
    if (split == Split::kTrain && (*stream)->epoch() > 0) break;
  }
  collected.counts = (*stream)->counts();
  return collected;
}

DataOptions Options(int64_t seq_len, int64_t batch_size, double validation_fraction,
                    uint64_t seed = 0) {
  DataOptions options;
  options.seq_len = seq_len;
  options.batch_size = batch_size;
  options.validation_fraction = validation_fraction;
  options.seed = seed;
  options.eos_token = kEos;
  return options;
}

std::string Decode(const std::vector<int32_t>& ids) {
  std::string text;
  for (const int32_t id : ids) text += id == kEos ? '|' : static_cast<char>(id);
  return text;
}

TEST(DataStreamTest, PacksParagraphsWithEosSeparators) {
  testing::TempDir dir;
  testing::WriteFile(dir.path() / "a.txt", "first paragraph\nstill first\n\n\nsecond one\n");
  testing::WriteFile(dir.path() / "b.md", "# third\n");
  testing::WriteFile(dir.path() / "ignored.csv", "not,data\n");
  // Everything held out, so the validation split reads it all, in file order, unshuffled.
  DataOptions options = Options(8, 1, 0.999999);
  const Collected all = ReadAll(dir.path(), Split::kValidation, options);
  std::string stream;
  for (const Batch& batch : all.batches) {
    ASSERT_EQ(batch.batch, 1);
    // Targets are the tokens shifted by one.
    for (int64_t t = 0; t + 1 < batch.seq_len; ++t)
      EXPECT_EQ(batch.targets[t], batch.tokens[t + 1]);
    stream += Decode(batch.tokens);
  }
  const std::string expected = "first paragraph\nstill first\n|second one\n|# third\n|";
  // Sequences overlap by the one token that is the last target, except the final tail.
  EXPECT_EQ(stream, expected.substr(0, expected.size() - 1));
  EXPECT_EQ(all.counts.files, 2);
  EXPECT_EQ(all.counts.documents, 3);
}

TEST(DataStreamTest, SupervisedExamplesCarryLossOnTheResponseOnly) {
  testing::TempDir dir;
  std::string lines;
  for (int i = 0; i < 10; ++i) {
    lines += R"({"prompt": "Q)" + std::string(static_cast<size_t>(i), 'q') +
             R"(:", "response": "A)" + std::to_string(i) + "\"}\n";
  }
  testing::WriteFile(dir.path() / "sft.jsonl", lines);
  DataOptions options = Options(64, 3, 0.999999);
  const Collected all = ReadAll(dir.path(), Split::kValidation, options);
  EXPECT_EQ(all.counts.sft_examples, 10);
  int64_t rows = 0;
  for (const Batch& batch : all.batches) {
    rows += batch.batch;
    for (int64_t r = 0; r < batch.batch; ++r) {
      const std::vector<int32_t> tokens(batch.tokens.begin() + r * batch.seq_len,
                                        batch.tokens.begin() + (r + 1) * batch.seq_len);
      const std::string text = Decode(tokens);
      const size_t colon = text.find(':');
      ASSERT_NE(colon, std::string::npos) << text;
      std::string supervised;
      for (int64_t t = 0; t < batch.seq_len; ++t) {
        const int32_t target = batch.targets[r * batch.seq_len + t];
        if (target < 0) continue;
        EXPECT_GE(static_cast<size_t>(t), colon) << "loss on a prompt token: " << text;
        supervised.push_back(target == kEos ? '|' : static_cast<char>(target));
      }
      EXPECT_THAT(supervised, ::testing::MatchesRegex("A[0-9]\\|")) << text;
    }
  }
  EXPECT_EQ(rows, 10);
}

TEST(DataStreamTest, BadFilesAndLinesAreSkippedCountedAndNamed) {
  testing::TempDir dir;
  testing::WriteFile(dir.path() / "mixed.jsonl",
                     "{\"text\": \"good one\"}\n"
                     "{\"text\": broken\n"
                     "{\"title\": \"wrong keys\"}\n"
                     "{\"text\": \"bad \xff utf8\"}\n"
                     "{\"prompt\": \"p\", \"response\": \"r\"}\n");
  testing::WriteFile(dir.path() / "blob.txt", std::string("PK\x03\x04\0\0binary", 12));
  testing::WriteFile(dir.path() / "notes.txt", "fine text\n\xc3\x28 invalid\nmore fine text\n");
  DataOptions options = Options(4, 1, 0.999999);
  const Collected all = ReadAll(dir.path(), Split::kValidation, options);
  EXPECT_EQ(all.counts.skipped_files, 1);
  EXPECT_EQ(all.counts.skipped_lines, 4);
  EXPECT_EQ(all.counts.sft_examples, 1);
  EXPECT_THAT(all.warnings,
              ::testing::UnorderedElementsAre("blob.txt: binary file, skipped",
                                              "mixed.jsonl:2: not valid JSON, line skipped",
                                              HasSubstr("mixed.jsonl:3: expected {\"text\""),
                                              "mixed.jsonl:4: invalid UTF-8, line skipped",
                                              "notes.txt:2: invalid UTF-8, line skipped"));
  std::string text;
  for (const Batch& batch : all.batches) text += Decode(batch.tokens);
  EXPECT_THAT(text, HasSubstr("fine text"));
  EXPECT_THAT(text, HasSubstr("more fine text"));
}

TEST(DataStreamTest, TheSplitIsStableAndDisjointAndTheSeedFixesTheOrder) {
  testing::TempDir dir;
  std::string text;
  for (int i = 0; i < 400; ++i) text += "doc" + std::to_string(1000 + i) + "\n\n";
  testing::WriteFile(dir.path() / "docs.txt", text);
  auto documents = [](const Collected& collected) {
    std::set<std::string> found;
    for (const Batch& batch : collected.batches) {
      const std::string decoded = Decode(batch.tokens);
      for (size_t at = decoded.find("doc"); at != std::string::npos;
           at = decoded.find("doc", at + 1)) {
        if (at + 7 <= decoded.size()) found.insert(decoded.substr(at, 7));
      }
    }
    return found;
  };
  DataOptions options = Options(16, 2, 0.1, 7);
  const Collected validation = ReadAll(dir.path(), Split::kValidation, options);
  const Collected train = ReadAll(dir.path(), Split::kTrain, options);
  const std::set<std::string> held_out = documents(validation);
  const std::set<std::string> trained = documents(train);
  EXPECT_GT(held_out.size(), 20u);
  EXPECT_LT(held_out.size(), 70u);
  for (const std::string& doc : held_out) EXPECT_FALSE(trained.contains(doc)) << doc;

  const Collected again = ReadAll(dir.path(), Split::kTrain, options);
  ASSERT_EQ(again.batches.size(), train.batches.size());
  for (size_t i = 0; i < train.batches.size(); ++i) {
    EXPECT_EQ(again.batches[i].tokens, train.batches[i].tokens);
  }
  options.seed = 8;
  const Collected reseeded = ReadAll(dir.path(), Split::kTrain, options);
  EXPECT_NE(reseeded.batches.front().tokens, train.batches.front().tokens);
  EXPECT_EQ(ReadAll(dir.path(), Split::kValidation, options).batches.size(),
            validation.batches.size())
      << "the split does not depend on the seed";
}

TEST(DataStreamTest, EmptyOrUnusableDirectoriesAreErrors) {
  testing::TempDir dir;
  const auto tokenizer = MakeByteTokenizer(258);
  DataOptions options = Options(128, 8, 0.05);
  EXPECT_THAT(DataStream::Open(dir.path(), *tokenizer, Split::kTrain, options).status().message(),
              HasSubstr("has no .txt, .md or .jsonl files"));
  testing::WriteFile(dir.path() / "short.txt", "hi\n");
  options.seq_len = 64;
  absl::StatusOr<std::unique_ptr<DataStream>> stream =
      DataStream::Open(dir.path(), *tokenizer, Split::kTrain, options);
  ASSERT_TRUE(stream.ok());
  Batch batch;
  // Three tokens never fill a sequence of 64: every epoch is empty.
  EXPECT_EQ((*stream)->Next(batch).status().code(), absl::StatusCode::kFailedPrecondition);
  options.eos_token = 999;
  EXPECT_FALSE(DataStream::Open(dir.path(), *tokenizer, Split::kTrain, options).ok());
}

}  // namespace
}  // namespace fedmoe::model
