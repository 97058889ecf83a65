#include "model/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/internal/utf8.h"
#include "storage/file_status.h"
#include "storage/read_file.h"

namespace fedmoe::model {
namespace {

using Json = nlohmann::json;

// The regex of Hugging Face's ByteLevel pre-tokenizer (GPT-2's).
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteTokenizer final : public Tokenizer {
 public:
  explicit ByteTokenizer(int64_t vocab_size) : vocab_size_(std::max<int64_t>(vocab_size, 256)) {}

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    std::transform(text.begin(), text.end(), ids.begin(),
                   [](char c) { return static_cast<int32_t>(static_cast<unsigned char>(c)); });
    return ids;
  }

  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids) const override {
    std::string text;
    for (const int32_t id : ids) {
      if (id < 0 || id >= vocab_size_) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size_, ")"));
      }
      if (id < 256) text.push_back(static_cast<char>(id));
    }
    return text;
  }

  int64_t vocab_size() const override { return vocab_size_; }
  std::string_view kind() const override { return "byte"; }

 private:
  int64_t vocab_size_;
};

void AppendUtf8(uint32_t code_point, std::string& out) {
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out.push_back(static_cast<char>(0xc0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  } else {
    out.push_back(static_cast<char>(0xe0 | (code_point >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3f)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3f)));
  }
}

// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map to
// themselves, the rest to code points from 256 up, so no token contains whitespace or controls.
struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_text;
  std::unordered_map<std::string, uint8_t> text_to_byte;

  ByteLevelAlphabet() {
    uint32_t next_extra = 256;
    for (uint32_t byte = 0; byte < 256; ++byte) {
      const bool printable =
          (byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || (byte >= 174);
      AppendUtf8(printable ? byte : next_extra++, byte_to_text[byte]);
      text_to_byte[byte_to_text[byte]] = static_cast<uint8_t>(byte);
    }
  }
};

const ByteLevelAlphabet& Alphabet() {
  static const auto* const alphabet = new ByteLevelAlphabet();
  return *alphabet;
}

// Splits UTF-8 text into its characters.
std::vector<std::string_view> Characters(std::string_view text) {
  std::vector<std::string_view> characters;
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    const size_t length = lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
    characters.push_back(text.substr(i, length));
    i += length;
  }
  return characters;
}

// A compiled PCRE2 pattern used to split text into "Isolated" pieces: every match is a piece and
// so is every stretch between matches.
class RegexSplitter {
 public:
  static absl::StatusOr<std::shared_ptr<const RegexSplitter>> Compile(std::string_view pattern) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
    if (code == nullptr) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error_code, message.data(), message.size());
      return absl::InvalidArgumentError(
          absl::StrCat("pre-tokenizer regex does not compile at offset ", error_offset, ": ",
                       reinterpret_cast<const char*>(message.data())));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // Optional speed-up; matching works without.
    return std::shared_ptr<const RegexSplitter>(new RegexSplitter(code));
  }

  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;
  ~RegexSplitter() { pcre2_code_free(code_); }

  // `text` must be valid UTF-8 (checked once by the caller).
  void Split(std::string_view text, std::vector<std::string_view>& pieces) const {
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t cursor = 0;
    size_t search = 0;
    while (search <= text.size()) {
      const int found = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                                    search, PCRE2_NO_UTF_CHECK, match, nullptr);
      if (found < 0) break;
      const PCRE2_SIZE* range = pcre2_get_ovector_pointer(match);
      const size_t begin = range[0];
      const size_t end = range[1];
      if (end == begin) {  // An empty match splits nothing; step over one character.
        if (begin >= text.size()) break;
        search = begin + Characters(text.substr(begin, 4)).front().size();
        continue;
      }
      if (begin > cursor) pieces.push_back(text.substr(cursor, begin - cursor));
      pieces.push_back(text.substr(begin, end - begin));
      cursor = end;
      search = end;
    }
    if (cursor < text.size()) pieces.push_back(text.substr(cursor));
    pcre2_match_data_free(match);
  }

 private:
  explicit RegexSplitter(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

struct AddedToken {
  std::string content;
  int32_t id = 0;
};

class BpeTokenizer final : public Tokenizer {
 public:
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override {
    if (const size_t bad = internal::FirstInvalidUtf8(text); bad != std::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("text is not valid UTF-8 at byte ", bad));
    }
    std::vector<int32_t> ids;
    size_t cursor = 0;
    while (cursor < text.size()) {
      // The earliest added token, longest first where two start at the same place.
      size_t best_at = std::string_view::npos;
      const AddedToken* best = nullptr;
      for (const AddedToken& token : added_tokens_) {
        const size_t at = text.find(token.content, cursor);
        if (at == std::string_view::npos) continue;
        if (best == nullptr || at < best_at ||
            (at == best_at && token.content.size() > best->content.size())) {
          best_at = at;
          best = &token;
        }
      }
      const size_t plain_end = best == nullptr ? text.size() : best_at;
      if (absl::Status status = EncodePlain(text.substr(cursor, plain_end - cursor), ids);
          !status.ok()) {
        return status;
      }
      if (best == nullptr) break;
      ids.push_back(best->id);
      cursor = best_at + best->content.size();
    }
    return ids;
  }

  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids) const override {
    std::string bytes;
    for (const int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() ||
          (id_to_token_[static_cast<size_t>(id)].empty() &&
           !is_special_[static_cast<size_t>(id)])) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " is not in the vocabulary"));
      }
      const std::string& token = id_to_token_[static_cast<size_t>(id)];
      if (is_special_[static_cast<size_t>(id)]) {
        bytes += token;
        continue;
      }
      for (const std::string_view character : Characters(token)) {
        const auto found = Alphabet().text_to_byte.find(std::string(character));
        if (found == Alphabet().text_to_byte.end()) {
          bytes.append(character);  // Not byte-level text: keep it as it is.
        } else {
          bytes.push_back(static_cast<char>(found->second));
        }
      }
    }
    return bytes;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::string_view kind() const override { return "bpe"; }

  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromJson(const Json& json);

 private:
  absl::Status EncodePlain(std::string_view text, std::vector<int32_t>& ids) const {
    if (text.empty()) return absl::OkStatus();
    std::string prefixed;
    if (add_prefix_space_ && text.front() != ' ') {
      prefixed = absl::StrCat(" ", std::string(text));
      text = prefixed;
    }
    std::vector<std::string_view> pieces = {text};
    for (const std::shared_ptr<const RegexSplitter>& splitter : splitters_) {
      std::vector<std::string_view> finer;
      for (const std::string_view piece : pieces) splitter->Split(piece, finer);
      pieces = std::move(finer);
    }
    for (const std::string_view piece : pieces) {
      std::string mapped;
      for (const char byte : piece)
        mapped += Alphabet().byte_to_text[static_cast<unsigned char>(byte)];
      if (absl::Status status = MergePiece(mapped, ids); !status.ok()) return status;
    }
    return absl::OkStatus();
  }

  // Applies the merges to one pre-tokenised piece: repeatedly join the adjacent pair with the
  // lowest merge rank (leftmost on ties) until no pair has a merge.
  absl::Status MergePiece(const std::string& piece, std::vector<int32_t>& ids) const {
    if (ignore_merges_) {
      if (const auto whole = vocab_.find(piece); whole != vocab_.end()) {
        ids.push_back(whole->second);
        return absl::OkStatus();
      }
    }
    std::vector<int32_t> symbols;
    for (const std::string_view character : Characters(piece)) {
      const auto found = vocab_.find(std::string(character));
      if (found == vocab_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("the vocabulary has no token for the byte-level character \"",
                         std::string(character), "\""));
      }
      symbols.push_back(found->second);
    }
    while (symbols.size() > 1) {
      size_t best_position = 0;
      const Merge* best = nullptr;
      for (size_t i = 0; i + 1 < symbols.size(); ++i) {
        const auto found = merges_.find(PairKey(symbols[i], symbols[i + 1]));
        if (found != merges_.end() && (best == nullptr || found->second.rank < best->rank)) {
          best = &found->second;
          best_position = i;
        }
      }
      if (best == nullptr) break;
      symbols[best_position] = best->merged;
      symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best_position) + 1);
    }
    ids.insert(ids.end(), symbols.begin(), symbols.end());
    return absl::OkStatus();
  }

  struct Merge {
    int64_t rank = 0;
    int32_t merged = 0;
  };

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> is_special_;
  std::vector<AddedToken> added_tokens_;
  std::vector<std::shared_ptr<const RegexSplitter>> splitters_;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
};

absl::Status Unsupported(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(
      "tokenizer.json: ", std::string(what), "; fedmoe supports byte-level BPE tokenizers only"));
}

bool IsNullOrAbsent(const Json& object, std::string_view key) {
  return !object.contains(key) || object.at(key).is_null();
}

// nlohmann's value() throws when the key holds another type; this does not.
std::string StringOr(const Json& object, std::string_view key) {
  return object.is_object() && object.contains(key) && object.at(key).is_string()
             ? object.at(key).get<std::string>()
             : std::string();
}

bool FlagOr(const Json& object, std::string_view key, bool fallback) {
  return object.contains(key) && object.at(key).is_boolean() ? object.at(key).get<bool>()
                                                             : fallback;
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromJson(const Json& json) {
  auto tokenizer = std::make_unique<BpeTokenizer>();
  if (!json.is_object() || !json.contains("model") || !json.at("model").is_object()) {
    return Unsupported("there is no \"model\" object");
  }
  const Json& model = json.at("model");
  if (!model.contains("type") || model.at("type") != "BPE") {
    return Unsupported(absl::StrCat("model.type is \"", StringOr(model, "type"), "\""));
  }
  if (FlagOr(model, "byte_fallback", false)) return Unsupported("model.byte_fallback is true");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!IsNullOrAbsent(model, key) && model.at(key) != "") {
      return Unsupported(absl::StrCat("model.", key, " is set"));
    }
  }
  if (!IsNullOrAbsent(json, "normalizer")) return Unsupported("a normalizer is set");
  tokenizer->ignore_merges_ = FlagOr(model, "ignore_merges", false);

  if (!model.contains("vocab") || !model.at("vocab").is_object()) {
    return Unsupported("model.vocab is not an object");
  }
  int64_t max_id = -1;
  for (const auto& [token, id] : model.at("vocab").items()) {
    if (!id.is_number_unsigned() || id.get<uint64_t>() > (uint64_t{1} << 24)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: vocab id of \"", token, "\" is not an id"));
    }
    tokenizer->vocab_[token] = id.get<int32_t>();
    max_id = std::max<int64_t>(max_id, id.get<int64_t>());
  }
  std::vector<AddedToken> added;
  if (json.contains("added_tokens") && json.at("added_tokens").is_array()) {
    for (const Json& token : json.at("added_tokens")) {
      if (!token.is_object() || !token.contains("id") || !token.at("id").is_number_unsigned() ||
          token.at("id").get<uint64_t>() > (uint64_t{1} << 24) || !token.contains("content") ||
          !token.at("content").is_string() || token.at("content").get<std::string>().empty()) {
        return absl::InvalidArgumentError(
            "tokenizer.json: an added token needs an id and non-empty content");
      }
      added.push_back({token.at("content").get<std::string>(), token.at("id").get<int32_t>()});
      max_id = std::max<int64_t>(max_id, token.at("id").get<int64_t>());
    }
  }
  tokenizer->id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  tokenizer->is_special_.assign(tokenizer->id_to_token_.size(), false);
  // Two tokens behind one id would decode one as the other: refused, not guessed between. An
  // added token may repeat its own vocab entry (GPT-2's <|endoftext|> is in both).
  std::vector<bool> assigned(tokenizer->id_to_token_.size(), false);
  auto assign = [&](const std::string& token, int32_t id) -> absl::Status {
    const auto slot = static_cast<size_t>(id);
    if (assigned[slot] && tokenizer->id_to_token_[slot] != token) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer.json: \"", tokenizer->id_to_token_[slot], "\" and \"", token,
                       "\" both have id ", id, "; each id must name one token"));
    }
    assigned[slot] = true;
    tokenizer->id_to_token_[slot] = token;
    return absl::OkStatus();
  };
  for (const auto& [token, id] : tokenizer->vocab_) {
    if (absl::Status status = assign(token, id); !status.ok()) return status;
  }
  for (const AddedToken& token : added) {
    if (absl::Status status = assign(token.content, token.id); !status.ok()) return status;
    tokenizer->is_special_[static_cast<size_t>(token.id)] = true;
  }
  tokenizer->added_tokens_ = std::move(added);

  if (!model.contains("merges") || !model.at("merges").is_array()) {
    return Unsupported("model.merges is not an array");
  }
  int64_t rank = 0;
  for (const Json& merge : model.at("merges")) {
    std::string left;
    std::string right;
    if (merge.is_string()) {
      const auto text = merge.get<std::string>();
      const size_t space = text.find(' ');
      if (space == std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer.json: merge \"", text, "\" is not two tokens"));
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError("tokenizer.json: a merge is neither \"a b\" nor [a, b]");
    }
    const auto left_id = tokenizer->vocab_.find(left);
    const auto right_id = tokenizer->vocab_.find(right);
    const auto merged_id = tokenizer->vocab_.find(left + right);
    if (left_id == tokenizer->vocab_.end() || right_id == tokenizer->vocab_.end() ||
        merged_id == tokenizer->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: merge \"", left, " ", right,
                                                     "\" uses or makes a token not in the vocab"));
    }
    // The first listing of a pair wins, as in the reference implementation.
    tokenizer->merges_.try_emplace(PairKey(left_id->second, right_id->second),
                                   Merge{rank++, merged_id->second});
  }

  // The pre-tokenizer: ByteLevel alone, or a Sequence of regex Splits and a ByteLevel.
  if (IsNullOrAbsent(json, "pre_tokenizer")) return Unsupported("there is no pre_tokenizer");
  std::vector<Json> steps;
  const Json& pre = json.at("pre_tokenizer");
  if (StringOr(pre, "type") == "Sequence" && pre.contains("pretokenizers") &&
      pre.at("pretokenizers").is_array()) {
    steps.assign(pre.at("pretokenizers").begin(), pre.at("pretokenizers").end());
  } else {
    steps.push_back(pre);
  }
  bool byte_level = false;
  for (const Json& step : steps) {
    const std::string type = StringOr(step, "type");
    if (type == "ByteLevel") {
      byte_level = true;
      tokenizer->add_prefix_space_ = FlagOr(step, "add_prefix_space", false);
      if (FlagOr(step, "use_regex", true)) {
        absl::StatusOr<std::shared_ptr<const RegexSplitter>> splitter =
            RegexSplitter::Compile(kGpt2Pattern);
        if (!splitter.ok()) return splitter.status();
        tokenizer->splitters_.push_back(*std::move(splitter));
      }
    } else if (type == "Split") {
      if (StringOr(step, "behavior") != "Isolated" || FlagOr(step, "invert", false) ||
          !step.contains("pattern") || !step.at("pattern").is_object()) {
        return Unsupported("a Split pre-tokenizer that is not an Isolated, non-inverted pattern");
      }
      const Json& pattern = step.at("pattern");
      std::string regex;
      if (pattern.contains("Regex") && pattern.at("Regex").is_string()) {
        regex = pattern.at("Regex").get<std::string>();
      } else if (pattern.contains("String") && pattern.at("String").is_string()) {
        // A literal: quote it for PCRE2.
        regex = absl::StrCat("\\Q", pattern.at("String").get<std::string>(), "\\E");
      } else {
        return Unsupported("a Split pre-tokenizer without a Regex or String pattern");
      }
      absl::StatusOr<std::shared_ptr<const RegexSplitter>> splitter = RegexSplitter::Compile(regex);
      if (!splitter.ok()) return splitter.status();
      tokenizer->splitters_.push_back(*std::move(splitter));
    } else {
      return Unsupported(absl::StrCat("pre-tokenizer \"", type, "\""));
    }
  }
  if (!byte_level) return Unsupported("the pre-tokenizer has no ByteLevel step");
  return tokenizer;
}

}  // namespace

std::unique_ptr<Tokenizer> MakeByteTokenizer(int64_t model_vocab_size) {
  return std::make_unique<ByteTokenizer>(model_vocab_size);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseBpeTokenizer(std::string_view tokenizer_json) {
  const Json json = Json::parse(tokenizer_json.begin(), tokenizer_json.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (json.is_discarded()) return absl::InvalidArgumentError("tokenizer.json is not valid JSON");
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer = BpeTokenizer::FromJson(json);
  if (!tokenizer.ok()) return tokenizer.status();
  return std::unique_ptr<Tokenizer>(*std::move(tokenizer));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& directory,
                                                         int64_t model_vocab_size) {
  const std::filesystem::path path = directory / "tokenizer.json";
  if (!storage::PathExists(path)) return MakeByteTokenizer(model_vocab_size);
  absl::StatusOr<std::string> text = storage::ReadSmallFile(path);
  if (!text.ok()) return text.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = ParseBpeTokenizer(*text);
  if (!tokenizer.ok()) return tokenizer.status();
  if ((*tokenizer)->vocab_size() > model_vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), " has ids up to ", (*tokenizer)->vocab_size() - 1,
                     " but the model's vocab_size is ", model_vocab_size));
  }
  return tokenizer;
}

}  // namespace fedmoe::model
