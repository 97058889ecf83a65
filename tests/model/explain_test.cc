// model::Explain against independent references: the attribution against a central finite
// difference of log p(target) as one token's embedding row is scaled, the routing and attention
// against the forward pass, and the next-token probabilities against a softmax of its logits.
#include "model/explain.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "model/forward.h"
#include "model/init.h"
#include "model/tokenizer.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// log p(target | tokens) at the last position, from a plain forward pass in double.
double LogProbability(const ModelParameters& parameters, const std::vector<int32_t>& tokens,
                      int32_t target) {
  ForwardPass pass;
  EXPECT_TRUE(Forward(parameters, tokens, 1, static_cast<int64_t>(tokens.size()), pass).ok());
  const int64_t vocab = parameters.config().vocab_size;
  const float* last = pass.logits.data() + (static_cast<int64_t>(tokens.size()) - 1) * vocab;
  double largest = last[0];
  for (int64_t v = 1; v < vocab; ++v) largest = std::max(largest, double{last[v]});
  double total = 0;
  for (int64_t v = 0; v < vocab; ++v) total += std::exp(last[v] - largest);
  return last[target] - largest - std::log(total);
}

// Untied embeddings, so that scaling a token's embedding row changes only the input at the
// positions holding that token, and tokens that each occur once.
struct Fixture {
  ModelParameters parameters = InitializeModel(testing::GradientCheckConfig(true, false, 2), 5);
  std::vector<int32_t> tokens = {3, 17, 8, 0, 21, 12, 5, 9};
};

TEST(ExplainTest, AttributionIsTheDerivativeOfTheLogProbabilityAsEachInputIsScaled) {
  Fixture f;
  for (const std::optional<int32_t> target :
       {std::optional<int32_t>(), std::optional<int32_t>(4)}) {
    absl::StatusOr<Explanation> explanation = Explain(f.parameters, f.tokens, target);
    ASSERT_TRUE(explanation.ok()) << explanation.status();
    ASSERT_EQ(explanation->attribution.size(), f.tokens.size());
    const int64_t hidden = f.parameters.config().hidden_size;
    double largest = 0;
    for (size_t t = 0; t < f.tokens.size(); ++t) {
      const double epsilon = 1e-3;
      double scaled[2];
      for (int side = 0; side < 2; ++side) {
        ModelParameters moved = f.parameters;
        float* row = moved.at(moved.layout().embed_tokens() + f.tokens[t] * hidden);
        for (int64_t h = 0; h < hidden; ++h)
          row[h] *= static_cast<float>(1 + (side ? -1 : 1) * epsilon);
        scaled[side] = LogProbability(moved, f.tokens, explanation->target);
      }
      const double reference = (scaled[0] - scaled[1]) / (2 * epsilon);
      largest = std::max(largest, std::abs(reference));
      EXPECT_NEAR(explanation->attribution[t], reference, 2e-3 + 0.02 * std::abs(reference))
          << "position " << t;
    }
    // Something real was measured: the text moves the prediction.
    EXPECT_GT(largest, 1e-2);
  }
}

TEST(ExplainTest, RoutingAttentionAndPredictionAreTheForwardPasses) {
  Fixture f;
  absl::StatusOr<Explanation> e = Explain(f.parameters, f.tokens, std::nullopt, 3);
  ASSERT_TRUE(e.ok()) << e.status();
  const MoeConfig& config = f.parameters.config();
  const int64_t length = static_cast<int64_t>(f.tokens.size());
  ForwardPass pass;
  ASSERT_TRUE(Forward(f.parameters, f.tokens, 1, length, pass).ok());

  ASSERT_EQ(e->layers, 2);
  ASSERT_EQ(e->heads, config.num_attention_heads);
  ASSERT_EQ(e->expert_index.size(), static_cast<size_t>(e->layers * length * e->top_k));
  for (int64_t layer = 0; layer < e->layers; ++layer) {
    const LayerActivations& a = pass.layers[static_cast<size_t>(layer)];
    for (int64_t i = 0; i < length * e->top_k; ++i) {
      EXPECT_EQ(e->expert_index[static_cast<size_t>(layer * length * e->top_k + i)],
                a.expert_index[static_cast<size_t>(i)]);
      EXPECT_EQ(e->expert_weight[static_cast<size_t>(layer * length * e->top_k + i)],
                a.expert_weight[static_cast<size_t>(i)]);
    }
    for (int64_t head = 0; head < e->heads; ++head) {
      for (int64_t q = 0; q < length; ++q) {
        double row = 0;
        for (int64_t k = 0; k < length; ++k) {
          const float p = e->Attention(layer, head, q, k);
          if (k > q) {
            EXPECT_EQ(p, 0.0f) << "a query sees a later key";
          }
          row += p;
        }
        EXPECT_NEAR(row, 1.0, 1e-5);
      }
    }
  }

  ASSERT_EQ(e->top_next.size(), 3U);
  for (size_t i = 0; i < e->top_next.size(); ++i) {
    EXPECT_NEAR(e->top_next[i].probability,
                std::exp(LogProbability(f.parameters, f.tokens, e->top_next[i].token)), 1e-6);
    if (i > 0) {
      EXPECT_GE(e->top_next[i - 1].probability, e->top_next[i].probability);
    }
  }
  EXPECT_EQ(e->target, e->top_next[0].token);
  EXPECT_DOUBLE_EQ(e->target_probability, e->top_next[0].probability);

  const std::vector<size_t> strongest = e->StrongestAttributions(3);
  ASSERT_EQ(strongest.size(), 3U);
  for (size_t t = 0; t < e->attribution.size(); ++t) {
    if (std::find(strongest.begin(), strongest.end(), t) == strongest.end()) {
      EXPECT_LE(std::abs(e->attribution[t]), std::abs(e->attribution[strongest[2]]));
    }
  }
}

TEST(ExplainTest, RefusesWhatItCannotExplainByName) {
  Fixture f;
  EXPECT_THAT(Explain(f.parameters, {}, std::nullopt).status().message(), HasSubstr("no tokens"));
  EXPECT_THAT(Explain(f.parameters, f.tokens, 23).status().message(),
              HasSubstr("target token 23 is outside the vocabulary"));
  EXPECT_FALSE(Explain(f.parameters, std::vector<int32_t>{1, 99}, std::nullopt).ok());
  EXPECT_FALSE(Explain(f.parameters, std::vector<int32_t>(40, 1), std::nullopt).ok());
}

TEST(TokenLabelsTest, KeepsTextAndMarksWhatCannotBeShown) {
  std::unique_ptr<Tokenizer> bytes = MakeByteTokenizer(258);
  // "é" split over two byte tokens, a newline, a tab, a control byte and a special token.
  const std::vector<int32_t> tokens = {'a', 0xC3, 0xA9, '\n', '\t', 0x01, '<', 257};
  absl::StatusOr<std::vector<std::string>> labels = TokenLabels(*bytes, tokens);
  ASSERT_TRUE(labels.ok()) << labels.status();
  EXPECT_THAT(*labels, ElementsAre("a", "\\xC3", "\\xA9", "\u21b5", "\u21e5", "\\x01", "<",
                                   "\u27e8"
                                   "257\u27e9"));
}

}  // namespace
}  // namespace fedmoe::model
