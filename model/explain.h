// What the model did with one text (issue [serve], `model explain`): the experts each token was
// routed to in each layer, every head's attention, and how much each input token drove the
// next-token prediction.
//
// The attribution is gradient × input on the embeddings. For the score f = log p(target | text)
// at the last position and the embedding row x_t that enters layer 0 at position t,
//   attribution_t = Σ_h x_t,h · ∂f/∂x_t,h,
// which is also the derivative of f as x_t is scaled, d f(x_t·(1 + ε)) / dε at ε = 0: positive
// where the token's presence pushes the prediction up, negative where it pushes it down. The
// gradient comes from the training backward pass (backward.h) with the cross-entropy of the
// single target and no balance term, so it is the same arithmetic training differentiates.
#ifndef FEDMOE_MODEL_EXPLAIN_H_
#define FEDMOE_MODEL_EXPLAIN_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/parameters.h"
#include "model/tokenizer.h"

namespace fedmoe::model {

struct NextTokenChoice {
  int32_t token = 0;
  double probability = 0;
};

struct Explanation {
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t experts = 0;
  int64_t top_k = 0;
  std::vector<int32_t> tokens;  // [T] the text's tokens
  // Per layer and token, the experts routed to and their renormalised weights (largest
  // first): [layers, T, top_k].
  std::vector<int32_t> expert_index;
  std::vector<float> expert_weight;
  // Per layer and head, each query's attention over the keys: [layers, heads, T, T], row q
  // summing to 1 over keys 0…q (causal: later keys are 0).
  std::vector<float> attention;
  // The token explained, its probability after the text, and attribution_t above: [T].
  int32_t target = 0;
  double target_probability = 0;
  std::vector<float> attribution;
  // The most likely next tokens, most likely first.
  std::vector<NextTokenChoice> top_next;

  float Attention(int64_t layer, int64_t head, int64_t query, int64_t key) const;
  // The positions of the `count` largest attributions by magnitude, largest first (ties by
  // position).
  std::vector<size_t> StrongestAttributions(size_t count) const;
};

// Runs the model over `tokens` (one sequence, at least one token, within the context) and
// explains its prediction of `target` after them, or of its own most likely next token when
// `target` is absent. InvalidArgument for an empty text, a token or target outside the
// vocabulary, or a text longer than the context.
absl::StatusOr<Explanation> Explain(const ModelParameters& parameters,
                                    std::span<const int32_t> tokens, std::optional<int32_t> target,
                                    int64_t top_next = 5);

// Each token's text, printable: its bytes where they are valid UTF-8 and not control
// characters, "\xNN" for a byte that is not (a byte tokenizer splits a character over several
// tokens), and a visible mark for a newline (↵), a tab (⇥) or a carriage return (␍); ⟨id⟩ for a
// special token that decodes to nothing.
absl::StatusOr<std::vector<std::string>> TokenLabels(const Tokenizer& tokenizer,
                                                     std::span<const int32_t> tokens);

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_EXPLAIN_H_
