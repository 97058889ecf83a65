// Text to token ids and back (DESIGN §7). Without a tokenizer.json the tokenizer is byte-level:
// a token id is a byte value. With one, it is that file's byte-level BPE (GPT-2 / Llama-3
// style): special tokens split out first, then the pre-tokenizer's regex, the byte-to-unicode
// map, and the merges by rank.
#ifndef FEDMOE_MODEL_TOKENIZER_H_
#define FEDMOE_MODEL_TOKENIZER_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fedmoe::model {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // InvalidArgument for text the tokenizer cannot represent: invalid UTF-8 for a BPE
  // tokenizer (the byte tokenizer takes any bytes).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;
  // The bytes behind the ids. A special token decodes to its content; an id the tokenizer does
  // not know is InvalidArgument.
  virtual absl::StatusOr<std::string> Decode(std::span<const int32_t> ids) const = 0;
  // Every id Encode returns is below this.
  virtual int64_t vocab_size() const = 0;
  virtual std::string_view kind() const = 0;
};

// Ids 0–255 are the bytes. Ids from 256 up to model_vocab_size are special tokens (EOS, ...)
// that decode to nothing.
std::unique_ptr<Tokenizer> MakeByteTokenizer(int64_t model_vocab_size = 256);

// Parses a Hugging Face tokenizer.json whose model is byte-level BPE. Refuses, with the field
// named, what it would get wrong rather than approximate: other model types, normalizers,
// byte fallback, and pre-tokenizers other than ByteLevel and regex Split.
absl::StatusOr<std::unique_ptr<Tokenizer>> ParseBpeTokenizer(std::string_view tokenizer_json);

// The model directory's tokenizer.json if it has one, otherwise the byte tokenizer.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& directory,
                                                         int64_t model_vocab_size);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_TOKENIZER_H_
