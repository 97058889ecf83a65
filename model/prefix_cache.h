// Reuse of the keys and values of prompts seen before (issue [serve]): requests that share a
// prefix (a system prompt, a document asked about again, a frequent query) skip recomputing its
// rows. A prefix of a KvCache is the cache of that prefix (generation.h), so a new prompt copies
// the rows of its longest common prefix with a remembered prompt and runs only the rest.
//
// Bounded by bytes, least recently used out first. Not thread-safe: the serving engine's one
// thread owns it. One per served model, since keys and values belong to one model's weights.
#ifndef FEDMOE_MODEL_PREFIX_CACHE_H_
#define FEDMOE_MODEL_PREFIX_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "model/generation.h"

namespace fedmoe::model {

class PrefixCache {
 public:
  // Holds at most `capacity_bytes` of keys and values; prompts shorter than `min_tokens` are not
  // remembered (their rows cost less than the bookkeeping).
  explicit PrefixCache(size_t capacity_bytes, int64_t min_tokens = 16)
      : capacity_bytes_(capacity_bytes), min_tokens_(min_tokens) {}

  // Copies into `cache` the rows of the longest prefix of `prompt` that a remembered prompt
  // shares, leaving at least the prompt's last token to run (its logits are wanted), and
  // returns how many tokens that is (0: none).
  int64_t Reuse(std::span<const int32_t> prompt, KvCache& cache);

  // Remembers the first prompt.size() rows of `cache` (which holds at least that many) as the
  // cache of `prompt`, evicting the least recently used entries beyond the capacity. A prompt
  // that a remembered one starts with adds nothing; a remembered prompt that this one starts
  // with is replaced.
  void Remember(std::span<const int32_t> prompt, const KvCache& cache);

  void Clear() { entries_.clear(); }
  size_t bytes() const;
  size_t entries() const { return entries_.size(); }

 private:
  struct Entry {
    std::vector<int32_t> tokens;
    KvCache cache;
    uint64_t last_used = 0;
  };

  size_t capacity_bytes_;
  int64_t min_tokens_;
  std::vector<Entry> entries_;
  uint64_t clock_ = 0;
};

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_PREFIX_CACHE_H_
