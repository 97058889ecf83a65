// UTF-8 validation shared by the tokenizer and the data pipeline. Internal to model/.
#ifndef FEDMOE_MODEL_INTERNAL_UTF8_H_
#define FEDMOE_MODEL_INTERNAL_UTF8_H_

#include <cstddef>
#include <string_view>

namespace fedmoe::model::internal {

// The offset of the first byte that is not part of valid UTF-8 (overlong forms, surrogates and
// code points above U+10FFFF included), or std::string_view::npos.
size_t FirstInvalidUtf8(std::string_view text);

}  // namespace fedmoe::model::internal

#endif  // FEDMOE_MODEL_INTERNAL_UTF8_H_
