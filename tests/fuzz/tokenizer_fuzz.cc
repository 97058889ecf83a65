// tokenizer.json parsing on arbitrary bytes, and the parsed tokenizer on text. A tokenizer that
// parses keeps its promises (model/tokenizer.h): every id Encode returns is below vocab_size,
// and those ids decode back to the text exactly, since byte-level BPE neither normalizes nor
// drops anything.
//
// The input is the tokenizer.json; the text encoded is a fixed sample plus the input's own
// printable bytes, so that the vocabulary's strings also show up in the text.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

void CheckRoundTrip(const fedmoe::model::Tokenizer& tokenizer, std::string_view text) {
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(text);
  if (!ids.ok()) return;  // Text the tokenizer cannot represent, refused.
  for (const int32_t id : *ids) {
    FEDMOE_FUZZ_CHECK(id >= 0 && id < tokenizer.vocab_size(),
                      absl::StrCat("Encode returned id ", id, " outside the vocabulary of ",
                                   tokenizer.vocab_size()));
  }
  absl::StatusOr<std::string> decoded = tokenizer.Decode(*ids);
  FEDMOE_FUZZ_CHECK(decoded.ok(),
                    absl::StrCat("ids from Encode do not decode: ", decoded.status().ToString()));
  FEDMOE_FUZZ_CHECK(*decoded == text, "Decode(Encode(text)) is not the text");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::unique_ptr<fedmoe::model::Tokenizer>> tokenizer =
      fedmoe::model::ParseBpeTokenizer(json);
  if (!tokenizer.ok()) return 0;
  CheckRoundTrip(**tokenizer, "Hello world! Ünïcödé, tabs\tand  spaces 12345 <|endoftext|>");
  std::string printable;
  for (const char c : json) {
    if (c >= ' ' && c <= '~') printable.push_back(c);
  }
  CheckRoundTrip(**tokenizer, printable);
  return 0;
}
