#include "model/prefix_cache.h"

#include <algorithm>
#include <utility>

namespace fedmoe::model {
namespace {

size_t CommonPrefix(std::span<const int32_t> a, std::span<const int32_t> b) {
  const size_t limit = std::min(a.size(), b.size());
  return static_cast<size_t>(
      std::mismatch(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(limit), b.begin()).first -
      a.begin());
}

}  // namespace

int64_t PrefixCache::Reuse(std::span<const int32_t> prompt, KvCache& cache) {
  if (prompt.size() < 2) return 0;
  Entry* best = nullptr;
  size_t best_length = 0;
  for (Entry& entry : entries_) {
    const size_t length = std::min(CommonPrefix(entry.tokens, prompt), prompt.size() - 1);
    if (length > best_length) {
      best = &entry;
      best_length = length;
    }
  }
  if (best == nullptr) return 0;
  // A device out of memory for the copy is a miss: the prompt's rows are computed instead.
  absl::StatusOr<KvCache> prefix = best->cache.Prefix(static_cast<int64_t>(best_length));
  if (!prefix.ok()) return 0;
  best->last_used = ++clock_;
  cache = *std::move(prefix);
  return static_cast<int64_t>(best_length);
}

void PrefixCache::Remember(std::span<const int32_t> prompt, const KvCache& cache) {
  const auto length = static_cast<int64_t>(prompt.size());
  if (length < min_tokens_ || cache.length() < length) return;
  for (Entry& entry : entries_) {
    if (CommonPrefix(entry.tokens, prompt) == prompt.size()) {
      entry.last_used = ++clock_;
      return;
    }
  }
  std::erase_if(entries_, [&](const Entry& entry) {
    return CommonPrefix(entry.tokens, prompt) == entry.tokens.size();
  });
  if (cache.BytesFor(length) > capacity_bytes_) return;
  absl::StatusOr<KvCache> prefix = cache.Prefix(length);
  if (!prefix.ok()) return;  // a device out of memory remembers nothing
  entries_.push_back(Entry{.tokens = {prompt.begin(), prompt.end()},
                           .cache = *std::move(prefix),
                           .last_used = ++clock_});
  while (bytes() > capacity_bytes_) {
    entries_.erase(
        std::min_element(entries_.begin(), entries_.end(),
                         [](const Entry& a, const Entry& b) { return a.last_used < b.last_used; }));
  }
}

size_t PrefixCache::bytes() const {
  size_t total = 0;
  for (const Entry& entry : entries_) total += entry.cache.bytes();
  return total;
}

}  // namespace fedmoe::model
