// An independent, deliberately naive double-precision Mixtral forward pass for tests: plain
// loops, one token and one expert at a time, weights looked up by their Hugging Face names. It
// shares no code with kernels/ or model/forward.cc, so agreement between the two is evidence
// that both compute the architecture, not that both share a bug.
#ifndef FEDMOE_TESTS_MODEL_NAIVE_REFERENCE_H_
#define FEDMOE_TESTS_MODEL_NAIVE_REFERENCE_H_

#include <cstdint>
#include <vector>

#include "model/parameters.h"

namespace fedmoe::testing {

struct ReferenceOutput {
  // [batch·seq_len, vocab]
  std::vector<double> logits;
  // Mean next-token cross-entropy over every position but each sequence's last.
  double loss = 0;
  // [layer][row] the experts chosen, best first, and their renormalised weights.
  std::vector<std::vector<std::vector<int>>> experts;
  std::vector<std::vector<std::vector<double>>> weights;
};

ReferenceOutput NaiveForward(const model::ModelParameters& parameters,
                             const std::vector<int32_t>& tokens, int64_t batch, int64_t seq_len);

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_MODEL_NAIVE_REFERENCE_H_
