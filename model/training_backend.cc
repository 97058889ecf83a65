#include "model/training_backend.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/axpy.h"
#include "kernels/cpu/bf16.h"

namespace fedmoe::model {
namespace {

class CpuTrainingBackend : public TrainingBackend {
 public:
  CpuTrainingBackend(ModelParameters& parameters, const BackendOptions& options)
      : parameters_(parameters),
        options_(options),
        optimizer_(parameters.layout(), options.trainable, options.adamw),
        gradients_(parameters.values().size(), 0.0F),
        expert_slots_(
            static_cast<size_t>(parameters.config().num_hidden_layers),
            std::vector<int64_t>(static_cast<size_t>(parameters.config().num_local_experts), 0)) {
    training_pass_.matmul_precision = options.matmul_precision;
  }

  absl::StatusOr<LossBreakdown> AccumulateGradients(const Batch& batch,
                                                    const BackwardOptions& options) override {
    if (absl::Status status =
            Forward(parameters_, batch.tokens, batch.batch, batch.seq_len, training_pass_);
        !status.ok()) {
      return status;
    }
    AddExpertSlots(training_pass_, expert_slots_);
    return Backward(parameters_, training_pass_, batch.targets, options_.trainable, options,
                    gradients_, scratch_);
  }

  absl::StatusOr<LossBreakdown> AccumulateClippedGradients(const Batch& batch,
                                                           const RecordRows& records,
                                                           const BackwardOptions& options,
                                                           double clip_norm, double routing_scale,
                                                           PrivateBatch& out) override {
    if (absl::Status status =
            Forward(parameters_, batch.tokens, batch.batch, batch.seq_len, training_pass_);
        !status.ok()) {
      return status;
    }
    return ClippedBackward(clipping_, records, options, clip_norm, routing_scale, training_pass_,
                           parameters_.config(), out, [&](const BackwardOptions& clipped) {
                             return Backward(parameters_, training_pass_, batch.targets,
                                             options_.trainable, clipped, gradients_, scratch_);
                           });
  }

  absl::Status UpdateStepGradients(
      const std::function<absl::Status(std::span<float>)>& update) override {
    return update(std::span<float>(gradients_.data(), gradients_.size()));
  }

  absl::StatusOr<double> ApplyGradients(double learning_rate, double max_norm) override {
    if (options_.proximal_coefficient > 0) {
      // Outside the trainable tensors θ and the anchor agree, or the optimizer ignores them.
      const auto pull = static_cast<float>(2 * options_.proximal_coefficient);
      absl::Status status = kernels::cpu::Axpy(pull, parameters_.values(), gradients_);
      status.Update(kernels::cpu::Axpy(-pull, options_.proximal_anchor, gradients_));
      if (!status.ok()) return status;
    }
    const double norm = GradientNorm(parameters_.layout(), options_.trainable, gradients_);
    optimizer_.Step(parameters_.values(), gradients_, learning_rate, norm, max_norm);
    std::fill(gradients_.begin(), gradients_.end(), 0.0F);
    return norm;
  }

  absl::StatusOr<LossSum> Evaluate(const Batch& batch) override {
    if (absl::Status status =
            Forward(parameters_, batch.tokens, batch.batch, batch.seq_len, evaluation_pass_);
        !status.ok()) {
      return status;
    }
    return CrossEntropy(evaluation_pass_, batch.targets, parameters_.config().vocab_size);
  }

  absl::StatusOr<std::vector<std::vector<int64_t>>> ExpertSlots() override { return expert_slots_; }

  absl::Status CopyGradientsTo(std::span<float> gradients) override {
    if (gradients.size() != gradients_.size()) {
      return absl::InvalidArgumentError(absl::StrCat("a gradient buffer of ", gradients.size(),
                                                     " values for a model of ", gradients_.size()));
    }
    std::copy(gradients_.begin(), gradients_.end(), gradients.begin());
    return absl::OkStatus();
  }

  absl::Status CopyParametersTo(ModelParameters& parameters) override {
    if (&parameters == &parameters_) return absl::OkStatus();
    if (parameters.values().size() != parameters_.values().size()) {
      return absl::InvalidArgumentError("the parameters' config differs from the trained model's");
    }
    std::copy(parameters_.values().begin(), parameters_.values().end(),
              parameters.values().begin());
    return absl::OkStatus();
  }

 private:
  ModelParameters& parameters_;
  BackendOptions options_;
  AdamW optimizer_;
  AlignedFloats gradients_;
  std::vector<std::vector<int64_t>> expert_slots_;
  ForwardPass training_pass_;
  // fp32 whatever the training precision, and kept apart so that validation does not resize
  // the training pass's buffers.
  ForwardPass evaluation_pass_;
  BackwardScratch scratch_;
  PerRecordClipping clipping_;
};

}  // namespace

absl::StatusOr<LossBreakdown> ClippedBackward(
    PerRecordClipping& clipping, const RecordRows& records, const BackwardOptions& options,
    double clip_norm, double routing_scale, const ForwardPass& pass, const MoeConfig& config,
    PrivateBatch& out,
    const std::function<absl::StatusOr<LossBreakdown>(const BackwardOptions&)>& backward) {
  clipping.Begin(records);
  BackwardOptions clipped = options;
  clipped.per_record = &clipping;
  absl::StatusOr<LossBreakdown> loss = backward(clipped);
  if (!loss.ok()) return loss.status();
  absl::StatusOr<std::vector<double>> norms = clipping.Finish(clip_norm);
  if (!norms.ok()) return norms.status();
  out.record_norms = std::move(*norms);
  AddRecordsRouting(pass, config, records, routing_scale, out.routing_sum);
  return loss;
}

void AddExpertSlots(const ForwardPass& pass, std::vector<std::vector<int64_t>>& slots) {
  for (size_t layer = 0; layer < pass.layers.size(); ++layer) {
    const std::vector<int64_t>& offsets = pass.layers[layer].permutation.offsets;
    for (size_t expert = 0; expert + 1 < offsets.size(); ++expert) {
      slots[layer][expert] += offsets[expert + 1] - offsets[expert];
    }
  }
}

void AddRecordsRouting(const ForwardPass& pass, const MoeConfig& config, const RecordRows& records,
                       double routing_scale, std::vector<double>& routing_sum) {
  const int64_t top_k = config.num_experts_per_tok;
  std::vector<int64_t> slots(
      static_cast<size_t>(config.num_hidden_layers * config.num_local_experts));
  for (int64_t r = 0; r < records.records(); ++r) {
    const int64_t first = records.row_begin[static_cast<size_t>(r)];
    const int64_t last = records.row_begin[static_cast<size_t>(r) + 1];
    std::fill(slots.begin(), slots.end(), 0);
    for (size_t l = 0; l < pass.layers.size(); ++l) {
      const std::vector<int32_t>& chosen = pass.layers[l].expert_index;
      for (int64_t i = first * top_k; i < last * top_k; ++i) {
        ++slots[l * static_cast<size_t>(config.num_local_experts) +
                static_cast<size_t>(chosen[static_cast<size_t>(i)])];
      }
    }
    AddRecordRouting(slots, (last - first) * top_k, routing_scale, routing_sum);
  }
}

void AddRecordRouting(std::span<const int64_t> slots, int64_t slots_per_layer, double routing_scale,
                      std::vector<double>& routing_sum) {
  if (slots_per_layer <= 0) return;
  const double scale = routing_scale / static_cast<double>(slots_per_layer);
  for (size_t i = 0; i < slots.size() && i < routing_sum.size(); ++i) {
    routing_sum[i] += scale * static_cast<double>(slots[i]);
  }
}

absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCpuTrainingBackend(
    ModelParameters& parameters, const BackendOptions& options) {
  if (options.matmul_precision == MatMulPrecision::kBfloat16) {
    if (absl::Status status = kernels::cpu::CheckBf16MatMul(); !status.ok()) return status;
  }
  if (absl::Status status = CheckProximalAnchor(options, parameters); !status.ok()) return status;
  return std::make_unique<CpuTrainingBackend>(parameters, options);
}

absl::Status CheckProximalAnchor(const BackendOptions& options, const ModelParameters& parameters) {
  if (options.proximal_coefficient < 0) {
    return absl::InvalidArgumentError("the proximal coefficient must not be negative");
  }
  if (options.proximal_coefficient > 0 &&
      options.proximal_anchor.size() != parameters.values().size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the proximal anchor has ", options.proximal_anchor.size(),
                     " values for a model of ", parameters.values().size()));
  }
  return absl::OkStatus();
}

}  // namespace fedmoe::model
