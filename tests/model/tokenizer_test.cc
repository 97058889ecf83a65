#include "model/tokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing_temp_dir.h"

namespace fedmoe::model {
namespace {

using Json = nlohmann::json;
using Ids = std::vector<int32_t>;

// A hand-made byte-level BPE tokenizer.json. Tokens are written in GPT-2's byte-level alphabet,
// where a space is "Ġ" (U+0120).
struct TokenizerSpec {
  std::vector<std::string> vocab;  // id = position
  std::vector<std::string> merges;
  std::vector<std::pair<int, std::string>> added;
  Json pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  Json model_extra = Json::object();

  std::string ToJson() const {
    Json vocab_json = Json::object();
    for (size_t i = 0; i < vocab.size(); ++i) vocab_json[vocab[i]] = i;
    Json model = {{"type", "BPE"}, {"vocab", vocab_json}, {"merges", merges}};
    model.update(model_extra);
    Json added_json = Json::array();
    for (const auto& [id, content] : added) {
      added_json.push_back({{"id", id}, {"content", content}, {"special", true}});
    }
    return Json{
        {"version", "1.0"}, {"normalizer", nullptr},      {"pre_tokenizer", pre_tokenizer},
        {"model", model},   {"added_tokens", added_json}, {"decoder", {{"type", "ByteLevel"}}}}
        .dump();
  }
};

std::unique_ptr<Tokenizer> Make(const TokenizerSpec& spec) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = ParseBpeTokenizer(spec.ToJson());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? *std::move(tokenizer) : nullptr;
}

Ids Encode(const Tokenizer& tokenizer, std::string_view text) {
  absl::StatusOr<Ids> ids = tokenizer.Encode(text);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : Ids{};
}

TokenizerSpec HelloWorld() {
  TokenizerSpec spec;
  //            0    1    2    3    4    5    6    7    8     9      10      11     12
  spec.vocab = {"h", "e", "l", "o", "Ġ", "w", "r", "d", "he", "ll", "hell", "hello", "Ġw",
                // 13    14      15       16        17   18   19
                "or", "Ġwor", "Ġworl", "Ġworld", "!", "Ã", "©"};
  spec.merges = {"h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"};
  return spec;
}

TEST(BpeTokenizerTest, MergesWordsIntoTheirTokens) {
  const auto tokenizer = Make(HelloWorld());
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(Encode(*tokenizer, "hello world"), (Ids{11, 16}));
  EXPECT_EQ(Encode(*tokenizer, "hello world!"), (Ids{11, 16, 17}));
  EXPECT_EQ(Encode(*tokenizer, "hell"), (Ids{10}));
  EXPECT_EQ(Encode(*tokenizer, "lo"), (Ids{2, 3}));
  EXPECT_EQ(Encode(*tokenizer, ""), Ids{});
  EXPECT_EQ(tokenizer->vocab_size(), 20);
}

TEST(BpeTokenizerTest, LowerRankMergesWin) {
  TokenizerSpec spec;
  spec.vocab = {"a", "b", "c", "ab", "bc"};
  spec.merges = {"a b", "b c"};
  EXPECT_EQ(Encode(*Make(spec), "abc"), (Ids{3, 2}));
  spec.merges = {"b c", "a b"};
  EXPECT_EQ(Encode(*Make(spec), "abc"), (Ids{0, 4}));
}

TEST(BpeTokenizerTest, MergesNeverCrossPreTokenizerPieces) {
  // GPT-2's regex cuts "don't" into "don" and "'t": the n-' merge must not apply.
  TokenizerSpec spec;
  spec.vocab = {"d", "o", "n", "'", "t", "n'", "'t"};
  spec.merges = {"n '", "' t"};
  EXPECT_EQ(Encode(*Make(spec), "don't"), (Ids{0, 1, 2, 6}));
}

TEST(BpeTokenizerTest, SpecialTokensSplitOutFirst) {
  TokenizerSpec spec = HelloWorld();
  spec.added = {{20, "<|eos|>"}, {21, "<|eos|>x"}};
  const auto tokenizer = Make(spec);
  EXPECT_EQ(Encode(*tokenizer, "hello<|eos|>hello"), (Ids{11, 20, 11}));
  EXPECT_EQ(Encode(*tokenizer, "<|eos|>"), (Ids{20}));
  // At one position the longer special token wins.
  EXPECT_EQ(Encode(*tokenizer, "h<|eos|>x"), (Ids{0, 21}));
  absl::StatusOr<std::string> text = tokenizer->Decode(Ids{11, 20, 16});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "hello<|eos|> world");
}

TEST(BpeTokenizerTest, DecodeInvertsEncodeThroughTheByteAlphabet) {
  const auto tokenizer = Make(HelloWorld());
  // "é" is the bytes C3 A9, whose byte-level characters are "Ã" and "©".
  for (const std::string text : {"hello world", "héllo", "world hello!"}) {
    absl::StatusOr<Ids> ids = tokenizer->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    absl::StatusOr<std::string> decoded = tokenizer->Decode(*ids);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, text);
  }
  EXPECT_EQ(Encode(*tokenizer, "é"), (Ids{18, 19}));
  EXPECT_EQ(tokenizer->Decode(Ids{99}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BpeTokenizerTest, SequenceOfRegexSplitAndByteLevel) {
  // Llama-3's form: a Split regex, then ByteLevel without its own regex.
  TokenizerSpec spec;
  spec.vocab = {"1", "2", "3", "4", "5", "a", "b", "12", "123", "45", "ab", "34"};
  spec.merges = {"1 2", "12 3", "4 5", "a b", "3 4"};
  spec.pre_tokenizer = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"},
         {"pattern", {{"Regex", "\\d{1,3}"}}},
         {"behavior", "Isolated"},
         {"invert", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  // Digits go in groups of three, so "3 4" never meets across "123" | "45".
  EXPECT_EQ(Encode(*Make(spec), "12345ab"), (Ids{8, 9, 10}));
}

TEST(BpeTokenizerTest, IgnoreMergesAndPrefixSpace) {
  TokenizerSpec spec;
  spec.vocab = {"a", "b", "c", "abc", "Ġ", "Ġa"};
  spec.merges = {"Ġ a"};
  spec.model_extra = {{"ignore_merges", true}};
  EXPECT_EQ(Encode(*Make(spec), "abc"), (Ids{3})) << "a whole word in the vocab skips merging";
  spec.model_extra = Json::object();
  EXPECT_EQ(Encode(*Make(spec), "abc"), (Ids{0, 1, 2}));
  spec.pre_tokenizer["add_prefix_space"] = true;
  EXPECT_EQ(Encode(*Make(spec), "a"), (Ids{5}));
}

TEST(BpeTokenizerTest, InvalidUtf8AndUnknownCharactersAreErrors) {
  const auto tokenizer = Make(HelloWorld());
  absl::StatusOr<Ids> ids = tokenizer->Encode("hel\xff");
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ids.status().message(), "text is not valid UTF-8 at byte 3");
  EXPECT_FALSE(tokenizer->Encode("\xed\xa0\x80").ok()) << "a UTF-16 surrogate is not UTF-8";
  EXPECT_FALSE(tokenizer->Encode("\xc0\xaf").ok()) << "an overlong encoding is not UTF-8";
  ids = tokenizer->Encode("hex");
  EXPECT_NE(ids.status().message().find("no token for the byte-level character \"x\""),
            std::string::npos);
}

TEST(BpeTokenizerTest, RefusesWhatItWouldGetWrong) {
  TokenizerSpec spec = HelloWorld();
  spec.model_extra = {{"byte_fallback", true}};
  EXPECT_NE(ParseBpeTokenizer(spec.ToJson()).status().message().find("byte_fallback"),
            std::string::npos);
  spec = HelloWorld();
  spec.pre_tokenizer = {{"type", "Metaspace"}};
  EXPECT_NE(ParseBpeTokenizer(spec.ToJson()).status().message().find("Metaspace"),
            std::string::npos);
  Json wordpiece = Json::parse(HelloWorld().ToJson());
  wordpiece["model"]["type"] = "WordPiece";
  EXPECT_NE(ParseBpeTokenizer(wordpiece.dump()).status().message().find("WordPiece"),
            std::string::npos);
  Json normalized = Json::parse(HelloWorld().ToJson());
  normalized["normalizer"] = {{"type", "NFC"}};
  EXPECT_NE(ParseBpeTokenizer(normalized.dump()).status().message().find("normalizer"),
            std::string::npos);
  Json bad_merge = Json::parse(HelloWorld().ToJson());
  bad_merge["model"]["merges"].push_back("x y");
  EXPECT_NE(ParseBpeTokenizer(bad_merge.dump()).status().message().find("not in the vocab"),
            std::string::npos);
  // Found by tests/fuzz/tokenizer_fuzz.cc: "o" would have encoded as 2 and decoded as "l".
  Json shared_id = Json::parse(HelloWorld().ToJson());
  shared_id["model"]["vocab"]["o"] = 2;
  EXPECT_NE(ParseBpeTokenizer(shared_id.dump()).status().message().find("both have id 2"),
            std::string::npos);
  TokenizerSpec clashing_added = HelloWorld();
  clashing_added.added = {{3, "<|endoftext|>"}};
  EXPECT_NE(ParseBpeTokenizer(clashing_added.ToJson()).status().message().find("both have id 3"),
            std::string::npos);
  Json wrong_type = Json::parse(HelloWorld().ToJson());
  wrong_type["pre_tokenizer"]["type"] = 7;
  EXPECT_FALSE(ParseBpeTokenizer(wrong_type.dump()).ok());
  EXPECT_FALSE(ParseBpeTokenizer("{not json").ok());
}

TEST(ByteTokenizerTest, IdsAreBytes) {
  const auto tokenizer = MakeByteTokenizer(258);
  absl::StatusOr<Ids> ids = tokenizer->Encode("Hé\n");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (Ids{72, 0xc3, 0xa9, 10}));
  absl::StatusOr<std::string> text = tokenizer->Decode(Ids{72, 257, 105});
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "Hi") << "special ids above 255 decode to nothing";
  EXPECT_FALSE(tokenizer->Decode(Ids{258}).ok());
  EXPECT_TRUE(tokenizer->Encode("\xff\xfe").ok()) << "any bytes are fine";
}

TEST(LoadTokenizerTest, UsesTokenizerJsonWhenPresent) {
  testing::TempDir dir;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(dir.path(), 256);
  ASSERT_TRUE(tokenizer.ok());
  EXPECT_EQ((*tokenizer)->kind(), "byte");
  std::ofstream(dir.path() / "tokenizer.json") << HelloWorld().ToJson();
  tokenizer = LoadTokenizer(dir.path(), 256);
  ASSERT_TRUE(tokenizer.ok());
  EXPECT_EQ((*tokenizer)->kind(), "bpe");
  tokenizer = LoadTokenizer(dir.path(), 10);
  EXPECT_NE(tokenizer.status().message().find("but the model's vocab_size is 10"),
            std::string::npos);
}

}  // namespace
}  // namespace fedmoe::model
