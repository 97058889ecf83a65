#include "model/config.h"

#include <string>

#include "gtest/gtest.h"
#include "model/parameters.h"

namespace fedmoe::model {
namespace {

// Mixtral-8x7B's published config.json.
constexpr char kMixtral8x7b[] = R"({
  "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
  "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
  "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": false,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
  "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0.dev0", "use_cache": true, "vocab_size": 32000
})";

constexpr char kTiny[] = R"({"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "num_local_experts": 8, "num_experts_per_tok": 2})";

std::string Without(std::string json, const std::string& key) {
  const size_t at = json.find("\"" + key + "\"");
  const size_t end = json.find_first_of(",}", at);
  if (json[end] == ',') return json.erase(at, end - at + 1);
  // The last key: take the comma before it instead.
  const size_t comma = json.rfind(',', at);
  return json.erase(comma, end - comma);
}

std::string With(std::string json, const std::string& entry) {
  return json.insert(1, entry + ", ");
}

std::string ErrorOf(const std::string& json) {
  absl::StatusOr<MoeConfig> config = ParseMoeConfig(json);
  EXPECT_FALSE(config.ok()) << json;
  return config.ok() ? "" : std::string(config.status().message());
}

TEST(MoeConfigTest, ParsesMixtral8x7bAndItsParameterCount) {
  absl::StatusOr<MoeConfig> config = ParseMoeConfig(kMixtral8x7b);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->num_key_value_heads, 8);
  EXPECT_EQ(config->sliding_window, 0);
  EXPECT_EQ(config->eos_token_id, 2);
  EXPECT_DOUBLE_EQ(config->rope_theta, 1e6);
  // The published total for Mixtral-8x7B is 46.7 B parameters.
  const ModelLayout layout(*config);
  EXPECT_EQ(layout.total_size(), 46'702'792'704);
}

TEST(MoeConfigTest, DefaultsFollowHuggingFace) {
  absl::StatusOr<MoeConfig> config = ParseMoeConfig(Without(kTiny, "num_key_value_heads"));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_key_value_heads, 4) << "missing KV heads means no grouping";
  EXPECT_EQ(config->head_dim, 16);
  EXPECT_DOUBLE_EQ(config->rms_norm_eps, 1e-5);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(config->n_shared_experts, 0);
  config = ParseMoeConfig(With(kTiny, R"("n_shared_experts": 2)"));
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->shared_inner_size(), 256) << "shared experts default to the routed width";
}

TEST(MoeConfigTest, ToJsonRoundTrips) {
  absl::StatusOr<MoeConfig> config =
      ParseMoeConfig(With(With(kTiny, R"("n_shared_experts": 2)"), R"("sliding_window": 16)"));
  ASSERT_TRUE(config.ok());
  absl::StatusOr<MoeConfig> again = ParseMoeConfig(config->ToJson());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->ToJson(), config->ToJson());
  EXPECT_NE(config->ToJson().find("\"model_type\": \"mixtral\""), std::string::npos);
}

TEST(MoeConfigTest, EachProblemIsASpecificError) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_local_experts", "num_experts_per_tok"}) {
    EXPECT_EQ(ErrorOf(Without(kTiny, key)), std::string("missing required key \"") + key + "\"");
  }
  EXPECT_EQ(ErrorOf("{"), "config is not valid JSON");
  EXPECT_EQ(ErrorOf("[1]"), "config is not a JSON object");
  EXPECT_EQ(ErrorOf(With(Without(kTiny, "hidden_size"), R"("hidden_size": "64")")),
            "\"hidden_size\" must be an integer, got \"64\"");
  EXPECT_EQ(ErrorOf(With(Without(kTiny, "hidden_size"), R"("hidden_size": 0)")),
            "\"hidden_size\" is 0, outside the allowed range [1, 1048576]");
  EXPECT_EQ(ErrorOf(With(Without(kTiny, "hidden_size"), R"("hidden_size": 66)")),
            "\"num_attention_heads\" (4) does not divide \"hidden_size\" (66)");
  EXPECT_EQ(ErrorOf(With(Without(kTiny, "num_key_value_heads"), R"("num_key_value_heads": 3)")),
            "\"num_key_value_heads\" (3) does not divide \"num_attention_heads\" (4)");
  EXPECT_EQ(ErrorOf(With(Without(kTiny, "num_experts_per_tok"), R"("num_experts_per_tok": 9)")),
            "\"num_experts_per_tok\" (9) is more than \"num_local_experts\" (8)");
  EXPECT_EQ(ErrorOf(With(kTiny, R"("head_dim": 7)")),
            "the head dimension (7) must be even for rotate-half RoPE");
  EXPECT_EQ(ErrorOf(With(kTiny, R"("rms_norm_eps": -1)")),
            "\"rms_norm_eps\" must be a positive number, got -1");
  EXPECT_EQ(ErrorOf(With(kTiny, R"("tie_word_embeddings": 1)")),
            "\"tie_word_embeddings\" must be true or false, got 1");
  EXPECT_EQ(ErrorOf(With(kTiny, R"("eos_token_id": 256)")),
            "\"eos_token_id\" (256) is not below \"vocab_size\" (256)");
  EXPECT_EQ(ErrorOf(With(kTiny, R"("model_type": "qwen2_moe")")),
            "\"model_type\" is \"qwen2_moe\"; fedmoe computes the Mixtral architecture "
            "(\"mixtral\")");
  EXPECT_EQ(ErrorOf(With(kTiny, R"("hidden_act": "gelu")")),
            "\"hidden_act\" is \"gelu\"; Mixtral's experts use \"silu\" (SwiGLU)");
  EXPECT_EQ(ErrorOf(With(kTiny, R"("rope_scaling": {"type": "linear", "factor": 2})")),
            "\"rope_scaling\" is set, and fedmoe implements only plain RoPE");
  EXPECT_EQ(ErrorOf(With(kTiny, R"("n_shared_experts": 1, "shared_expert_intermediate_size": 0)")),
            "\"n_shared_experts\" is set but \"shared_expert_intermediate_size\" is 0");
  EXPECT_EQ(ErrorOf(With(Without(kTiny, "vocab_size"), R"("vocab_size": 18446744073709551615)")),
            "\"vocab_size\" is 18446744073709551615, more than the maximum 16777216");
}

TEST(MoeConfigTest, LoadNamesTheFile) {
  absl::StatusOr<MoeConfig> config = LoadMoeConfig("/nonexistent/config.json");
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(config.status().message().find("/nonexistent/config.json"), std::string::npos);
}

}  // namespace
}  // namespace fedmoe::model
