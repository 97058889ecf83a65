// DP-SGD against independent references: per-record norms and the clipped sum against one
// backward pass per record with the gradient materialised, the Gram identity against a plain
// double loop, the noise's moments over 10^6 draws, Poisson sampling's rate, and what a record is.
#include "model/dp_sgd.h"

#include <cmath>
#include <fstream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "model/backward.h"
#include "model/init.h"
#include "model/per_record_clipping.h"
#include "model/tokenizer.h"
#include "model/trainer.h"
#include "tests/testing_temp_dir.h"
#include "tests/testing_tiny_model.h"

namespace fedmoe::model {
namespace {

// The gradient tests' configuration, with a vocabulary of 29.
MoeConfig SmallConfig() {
  MoeConfig config = testing::GradientCheckConfig(/*shared=*/true, /*tied=*/false, 2);
  config.vocab_size = 29;
  return config;
}

TEST(WeightGradientNormTest, GramAndMaterialisedFormsEqualThePlainSum) {
  std::mt19937 generator(3);
  std::normal_distribution<float> normal;
  for (const auto& [rows, in, out] :
       std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 5, 3}, {7, 4, 9}, {20, 3, 2}}) {
    std::vector<float> x(static_cast<size_t>(rows * in));
    std::vector<float> dy(static_cast<size_t>(rows * out));
    for (float& v : x) v = normal(generator);
    for (float& v : dy) v = normal(generator);
    double expected = 0;
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t i = 0; i < in; ++i) {
        double entry = 0;
        for (int64_t t = 0; t < rows; ++t) entry += double{dy[t * out + o]} * double{x[t * in + i]};
        expected += entry * entry;
      }
    }
    for (const NormMethod method :
         {NormMethod::kGram, NormMethod::kMaterialised, NormMethod::kCheapest}) {
      EXPECT_NEAR(WeightGradientSquaredNorm(x.data(), dy.data(), rows, in, out, method), expected,
                  1e-5 * expected)
          << rows << "x" << in << "x" << out;
    }
  }
}

// A record of `length` random tokens; with `prompt`, its first tokens carry no loss.
Record RandomRecord(int64_t length, int64_t prompt, int64_t vocab, uint32_t seed) {
  std::mt19937 generator(seed);
  Record record;
  for (int64_t i = 0; i < length; ++i) {
    record.tokens.push_back(static_cast<int32_t>(generator() % static_cast<uint32_t>(vocab)));
    record.loss.push_back(i > 0 && i >= prompt ? 1 : 0);
  }
  return record;
}

struct ClippingCase {
  const char* name;
  NormMethod method;
};

class PerRecordClippingTest : public ::testing::TestWithParam<ClippingCase> {};

// Records of 3, 1 and 2 windows (one with a prompt), on attention, norms, router, routed and
// shared experts and the output head: the norms and the clipped sum agree with a backward pass
// per record, each record's gradient materialised, to 1e-5.
TEST_P(PerRecordClippingTest, MatchesOneBackwardPerRecord) {
  ModelParameters parameters = InitializeModel(SmallConfig(), 5);
  const MoeConfig& config = parameters.config();
  constexpr int64_t kSeqLen = 6;
  const std::vector<Record> records = {RandomRecord(17, 0, config.vocab_size, 1),
                                       RandomRecord(5, 2, config.vocab_size, 2),
                                       RandomRecord(12, 4, config.vocab_size, 3)};
  const TrainableSet trainable =
      *TrainableSet::Parse("routed_experts,shared_experts,router,attention,norms,output");
  BackwardOptions options;
  options.balance_coefficient = 0.3;

  // The reference: each record alone, its loss the mean over its predictions.
  std::vector<std::vector<float>> per_record;
  std::vector<double> reference_norms;
  for (const Record& record : records) {
    Batch batch;
    RecordRows rows;
    AppendRecordWindows(record, kSeqLen, 64, 0, batch, rows);
    ForwardPass pass;
    ASSERT_TRUE(Forward(parameters, batch.tokens, batch.batch, batch.seq_len, pass).ok());
    std::vector<float> gradient(parameters.values().size(), 0.0F);
    BackwardOptions alone = options;
    alone.predictions_in_step = static_cast<double>(batch.predictions);
    BackwardScratch scratch;
    ASSERT_TRUE(
        Backward(parameters, pass, batch.targets, trainable, alone, gradient, scratch).ok());
    double squares = 0;
    for (const float g : gradient) squares += double{g} * g;
    reference_norms.push_back(std::sqrt(squares));
    per_record.push_back(std::move(gradient));
  }
  // A clip norm between the records' norms, so some are clipped and some are not.
  ASSERT_EQ(reference_norms.size(), 3U);
  const double smallest = *std::min_element(reference_norms.begin(), reference_norms.end());
  const double largest = *std::max_element(reference_norms.begin(), reference_norms.end());
  const double clip_norm = 0.5 * (smallest + largest);
  std::vector<double> expected(parameters.values().size(), 0.0);
  for (size_t r = 0; r < records.size(); ++r) {
    const double factor = std::min(1.0, clip_norm / reference_norms[r]);
    for (size_t i = 0; i < expected.size(); ++i) expected[i] += factor * per_record[r][i];
  }

  // All three records in one pass.
  Batch batch;
  RecordRows rows;
  for (const Record& record : records) AppendRecordWindows(record, kSeqLen, 64, 0, batch, rows);
  ASSERT_EQ(batch.batch, 6);
  ForwardPass pass;
  ASSERT_TRUE(Forward(parameters, batch.tokens, batch.batch, batch.seq_len, pass).ok());
  PerRecordClipping clipping(GetParam().method);
  clipping.Begin(rows);
  options.per_record = &clipping;
  std::vector<float> gradients(parameters.values().size(), 0.0F);
  BackwardScratch scratch;
  ASSERT_TRUE(
      Backward(parameters, pass, batch.targets, trainable, options, gradients, scratch).ok());
  EXPECT_TRUE(std::all_of(gradients.begin(), gradients.end(), [](float g) { return g == 0; }))
      << "with per-record clipping, Backward leaves the sum to Finish";
  absl::StatusOr<std::vector<double>> norms = clipping.Finish(clip_norm);
  ASSERT_TRUE(norms.ok()) << norms.status();
  ASSERT_EQ(norms->size(), records.size());
  for (size_t r = 0; r < records.size(); ++r) {
    EXPECT_NEAR((*norms)[r], reference_norms[r], 1e-5 * reference_norms[r]) << "record " << r;
  }
  double scale = 0;
  for (const double e : expected) scale = std::max(scale, std::abs(e));
  ASSERT_GT(scale, 0);
  for (const TensorSpec& spec : parameters.layout().tensors()) {
    for (int64_t i = spec.offset; i < spec.offset + spec.size; ++i) {
      ASSERT_NEAR(gradients[static_cast<size_t>(i)], expected[static_cast<size_t>(i)], 1e-5 * scale)
          << spec.name << "[" << i - spec.offset << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Methods, PerRecordClippingTest,
                         ::testing::Values(ClippingCase{"gram", NormMethod::kGram},
                                           ClippingCase{"materialised", NormMethod::kMaterialised},
                                           ClippingCase{"cheapest", NormMethod::kCheapest}),
                         [](const auto& test) { return std::string(test.param.name); });

TEST(PerRecordClippingTest, EmbeddingsAndBf16AreRefused) {
  ModelParameters parameters = InitializeModel(SmallConfig(), 5);
  Batch batch;
  RecordRows rows;
  AppendRecordWindows(RandomRecord(7, 0, 29, 1), 6, 64, 0, batch, rows);
  ForwardPass pass;
  ASSERT_TRUE(Forward(parameters, batch.tokens, batch.batch, batch.seq_len, pass).ok());
  PerRecordClipping clipping;
  clipping.Begin(rows);
  BackwardOptions options;
  options.per_record = &clipping;
  std::vector<float> gradients(parameters.values().size(), 0.0F);
  BackwardScratch scratch;
  absl::StatusOr<LossBreakdown> loss =
      Backward(parameters, pass, batch.targets, *TrainableSet::Parse("embeddings"), options,
               gradients, scratch);
  ASSERT_FALSE(loss.ok());
  EXPECT_NE(loss.status().message().find("embeddings"), std::string::npos) << loss.status();
}

TEST(GradientNoiseTest, MeanAndVarianceOverAMillionDrawsAreSigmaTimesClip) {
  constexpr int64_t kDraws = 1'000'000;
  constexpr double kSigma = 1.3;
  constexpr double kClip = 0.7;
  absl::StatusOr<GradientNoise> noise = GradientNoise::Create(kSigma, kClip, kDraws);
  ASSERT_TRUE(noise.ok()) << noise.status();
  absl::StatusOr<privacy::SecureRandom> random = privacy::SecureRandom::FromSystem();
  ASSERT_TRUE(random.ok());
  std::vector<float> values(kDraws, 0.0F);
  ASSERT_TRUE(noise->AddTo(values, *random).ok());
  double sum = 0;
  double squares = 0;
  for (const float v : values) {
    sum += v;
    squares += double{v} * v;
  }
  const double stddev = kSigma * kClip;
  const double mean = sum / kDraws;
  const double variance = squares / kDraws - mean * mean;
  // Five standard errors: of the mean σC/√n, of the variance σ²C²·√(2/n).
  EXPECT_LT(std::abs(mean), 5 * stddev / std::sqrt(double{kDraws}));
  EXPECT_NEAR(variance, stddev * stddev, 5 * stddev * stddev * std::sqrt(2.0 / kDraws));
  // Every value is an integer number of grid steps, to float precision, and the grid keeps the
  // sensitivity within 2^-11 of C.
  for (size_t i = 0; i < 1000; ++i) {
    const double steps = double{values[i]} / noise->grid();
    EXPECT_LE(std::abs(steps - std::round(steps)), std::abs(steps) * 0x1.0p-23) << steps;
  }
  EXPECT_LT(noise->effective_noise_multiplier(), kSigma);
  EXPECT_GT(noise->effective_noise_multiplier(), kSigma / (1 + std::ldexp(1.0, -11)));
}

TEST(RecordSamplerTest, TakesEachRecordAtTheRate) {
  constexpr int64_t kRecords = 1000;
  constexpr double kRate = 0.03;
  constexpr int kSteps = 2000;
  absl::StatusOr<privacy::SecureRandom> random = privacy::SecureRandom::FromSystem();
  ASSERT_TRUE(random.ok());
  RecordSampler sampler(kRecords, kRate, std::move(*random));
  std::vector<int> taken(kRecords, 0);
  int64_t total = 0;
  for (int step = 0; step < kSteps; ++step) {
    absl::StatusOr<std::vector<int64_t>> draw = sampler.Draw();
    ASSERT_TRUE(draw.ok());
    ASSERT_TRUE(std::is_sorted(draw->begin(), draw->end()));
    for (const int64_t index : *draw) {
      ASSERT_GE(index, 0);
      ASSERT_LT(index, kRecords);
      ++taken[static_cast<size_t>(index)];
    }
    total += static_cast<int64_t>(draw->size());
  }
  const double expected = kRate * kRecords * kSteps;
  EXPECT_NEAR(static_cast<double>(total), expected, 5 * std::sqrt(expected));
  // The first and last records are taken as often as the rest (no edge effect in the gaps).
  const double per_record = kRate * kSteps;
  EXPECT_NEAR(taken.front() + taken[1] + taken[2], 3 * per_record, 5 * std::sqrt(3 * per_record));
  EXPECT_NEAR(taken.back() + taken[kRecords - 2] + taken[kRecords - 3], 3 * per_record,
              5 * std::sqrt(3 * per_record));
}

class RecordUnitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(directory_.path() / "notes.txt")
        << "first paragraph line one\nfirst paragraph line two\n\nsecond paragraph\n";
    std::ofstream(directory_.path() / "chat.jsonl")
        << R"({"text": "a whole line"})"
        << "\n"
        << R"({"prompt": "question?", "response": "answer."})"
        << "\n";
  }
  RecordSet Read(RecordUnit unit) {
    DataOptions options;
    options.validation_fraction = 0;
    options.eos_token = 256;
    absl::StatusOr<RecordSet> set = ReadRecords(directory_.path(), *tokenizer_, options, unit);
    EXPECT_TRUE(set.ok()) << set.status();
    return set.ok() ? *std::move(set) : RecordSet();
  }
  testing::TempDir directory_;
  std::unique_ptr<Tokenizer> tokenizer_ = MakeByteTokenizer(258);
};

TEST_F(RecordUnitTest, ParagraphsLinesAndFilesAreRecords) {
  EXPECT_EQ(Read(RecordUnit::kParagraph).records.size(), 4U);
  EXPECT_EQ(Read(RecordUnit::kLine).records.size(), 5U);
  const RecordSet files = Read(RecordUnit::kFile);
  ASSERT_EQ(files.records.size(), 2U);
  // The supervised line's prompt carries no loss inside the file record.
  int64_t predictions = 0;
  for (const Record& record : files.records) predictions += record.predictions();
  const int64_t text_bytes =
      std::string("first paragraph line one\nfirst paragraph line two\n").size() +
      std::string("second paragraph\n").size() + std::string("a whole line").size();
  // Every text byte and EOS, the response and its EOS, less each file's first token.
  EXPECT_EQ(predictions, text_bytes + 3 + std::string("answer.").size() + 1 - 2);
}

TEST_F(RecordUnitTest, NamesParseBothWays) {
  for (const RecordUnit unit : {RecordUnit::kLine, RecordUnit::kParagraph, RecordUnit::kFile}) {
    EXPECT_EQ(*ParseRecordUnit(RecordUnitName(unit)), unit);
  }
  EXPECT_FALSE(ParseRecordUnit("sentence").ok());
}

TEST(PrivateTrainingTest, TrainsReportsItsSpendAndNoisesTheRouting) {
  MoeConfig config = SmallConfig();
  config.vocab_size = 258;
  config.eos_token_id = 256;
  config.max_position_embeddings = 64;
  ModelParameters parameters = InitializeModel(config, 1);
  const auto tokenizer = MakeByteTokenizer(258);
  TrainOptions options;
  options.steps = 4;
  options.batch_size = 4;
  options.seq_len = 32;
  options.eval_every = 0;
  options.record_privacy.enabled = true;
  options.record_privacy.noise_multiplier = 1.1;
  options.record_privacy.clip_norm = 0.5;
  const std::filesystem::path corpus =
      std::filesystem::path(FEDMOE_SOURCE_DIR) / "deploy" / "corpora" / "finance";
  absl::StatusOr<TrainResult> result = Train(parameters, *tokenizer, corpus, options);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(result->record_privacy.has_value());
  const RecordPrivacySpend& spend = *result->record_privacy;
  EXPECT_EQ(spend.steps, 4);
  EXPECT_GT(spend.records, 4);
  EXPECT_DOUBLE_EQ(spend.sampling_rate, 4.0 / static_cast<double>(spend.records));
  EXPECT_NEAR(spend.noise_multiplier, 1.1, 1.1e-3);
  EXPECT_TRUE(std::isfinite(result->train_loss));
  // What the daemon prices a round at before it trains is what the run then reports.
  const RecordPrivacySpend planned =
      PlannedRecordPrivacySpend(parameters.layout(), config, options, spend.records);
  EXPECT_EQ(planned.steps, spend.steps);
  EXPECT_EQ(planned.sampling_rate, spend.sampling_rate);
  EXPECT_EQ(planned.noise_multiplier, spend.noise_multiplier);
  EXPECT_DOUBLE_EQ(planned.sampler_total_variation, spend.sampler_total_variation);
  // The noised routing histogram, in slot units: as many as the layers and experts, none
  // negative, and not all zero (the records' fractions are a quarter of the clip norm).
  ASSERT_EQ(result->expert_slots.size(), static_cast<size_t>(config.num_hidden_layers));
  int64_t total_slots = 0;
  for (const std::vector<int64_t>& layer : result->expert_slots) {
    ASSERT_EQ(layer.size(), static_cast<size_t>(config.num_local_experts));
    for (const int64_t slots : layer) {
      EXPECT_GE(slots, 0);
      total_slots += slots;
    }
  }
  EXPECT_GT(total_slots, 0);

  // Records read beforehand (as the daemon does to price a round) are what it trains on; read
  // with another unit they are refused.
  DataOptions data;
  data.seq_len = options.seq_len;
  data.eos_token = 256;
  absl::StatusOr<RecordSet> lines = ReadRecords(corpus, *tokenizer, data, RecordUnit::kLine);
  ASSERT_TRUE(lines.ok()) << lines.status();
  options.record_privacy.unit = RecordUnit::kLine;
  options.record_privacy.records = std::make_shared<const RecordSet>(*lines);
  absl::StatusOr<TrainResult> given = Train(parameters, *tokenizer, corpus, options);
  ASSERT_TRUE(given.ok()) << given.status();
  EXPECT_EQ(given->record_privacy->records, static_cast<int64_t>(lines->records.size()));
  options.record_privacy.unit = RecordUnit::kFile;
  EXPECT_FALSE(Train(parameters, *tokenizer, corpus, options).ok());
  options.record_privacy.records = nullptr;

  options.trainable = *TrainableSet::Parse("embeddings");
  absl::StatusOr<TrainResult> refused = Train(parameters, *tokenizer, corpus, options);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("embeddings"), std::string::npos);
}

}  // namespace
}  // namespace fedmoe::model
