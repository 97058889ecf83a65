// The CPU training backend over adapters (training_backend.h's CreateCpuAdapterBackend): the
// CPU backend's steps with adapted_model.h's passes and the adapters' buffer in the place of
// the parameters.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "model/adapted_model.h"
#include "model/training_backend.h"

namespace fedmoe::model {
namespace {

class CpuAdapterBackend : public TrainingBackend {
 public:
  CpuAdapterBackend(const FrozenBase& base, LoraAdapters& adapters, const BackendOptions& options)
      : base_(base),
        adapters_(adapters),
        ranges_(AdapterTrainedRanges(adapters)),
        optimizer_(ranges_, options.adamw),
        gradients_(adapters.values().size(), 0.0F),
        expert_slots_(
            static_cast<size_t>(base.config().num_hidden_layers),
            std::vector<int64_t>(static_cast<size_t>(base.config().num_local_experts), 0)) {}

  absl::StatusOr<LossBreakdown> AccumulateGradients(const Batch& batch,
                                                    const BackwardOptions& options) override {
    if (absl::Status status = Forward(batch, training_pass_); !status.ok()) return status;
    AddExpertSlots(training_pass_.model, expert_slots_);
    return AdaptedBackward(base_, adapters_, training_pass_, batch.targets, options, gradients_,
                           scratch_);
  }

  absl::StatusOr<LossBreakdown> AccumulateClippedGradients(const Batch& batch,
                                                           const RecordRows& records,
                                                           const BackwardOptions& options,
                                                           double clip_norm, double routing_scale,
                                                           PrivateBatch& out) override {
    if (absl::Status status = Forward(batch, training_pass_); !status.ok()) return status;
    return ClippedBackward(clipping_, records, options, clip_norm, routing_scale,
                           training_pass_.model, base_.config(), out,
                           [&](const BackwardOptions& clipped) {
                             return AdaptedBackward(base_, adapters_, training_pass_, batch.targets,
                                                    clipped, gradients_, scratch_);
                           });
  }

  absl::Status UpdateStepGradients(
      const std::function<absl::Status(std::span<float>)>& update) override {
    return update(std::span<float>(gradients_.data(), gradients_.size()));
  }

  absl::StatusOr<double> ApplyGradients(double learning_rate, double max_norm) override {
    const double norm = GradientNorm(ranges_, gradients_);
    optimizer_.Step(adapters_.values(), gradients_, learning_rate, norm, max_norm);
    std::fill(gradients_.begin(), gradients_.end(), 0.0F);
    return norm;
  }

  absl::StatusOr<LossSum> Evaluate(const Batch& batch) override {
    if (absl::Status status = Forward(batch, evaluation_pass_); !status.ok()) return status;
    return CrossEntropy(evaluation_pass_.model, batch.targets, base_.config().vocab_size);
  }

  absl::StatusOr<std::vector<std::vector<int64_t>>> ExpertSlots() override { return expert_slots_; }

  absl::Status CopyGradientsTo(std::span<float> gradients) override {
    if (gradients.size() != gradients_.size()) {
      return absl::InvalidArgumentError(absl::StrCat("a gradient buffer of ", gradients.size(),
                                                     " values for adapters of ",
                                                     gradients_.size()));
    }
    std::copy(gradients_.begin(), gradients_.end(), gradients.begin());
    return absl::OkStatus();
  }

  absl::Status CopyAdaptersTo(LoraAdapters& adapters) override {
    if (adapters.values().size() != adapters_.values().size()) {
      return absl::InvalidArgumentError("the adapters' layout differs from the trained ones'");
    }
    if (&adapters != &adapters_) {
      std::copy(adapters_.values().begin(), adapters_.values().end(), adapters.values().begin());
    }
    return absl::OkStatus();
  }

  absl::Status CopyParametersTo(ModelParameters&) override {
    return absl::UnimplementedError(
        "an adapter backend trains its adapters in place and holds no full parameters");
  }

 private:
  absl::Status Forward(const Batch& batch, AdaptedPass& pass) {
    return AdaptedForward(base_, adapters_, batch.tokens, batch.batch, batch.seq_len, pass);
  }

  const FrozenBase& base_;
  LoraAdapters& adapters_;
  std::vector<TrainedRange> ranges_;
  AdamW optimizer_;
  AlignedFloats gradients_;
  std::vector<std::vector<int64_t>> expert_slots_;
  AdaptedPass training_pass_;
  AdaptedPass evaluation_pass_;
  AdaptedScratch scratch_;
  PerRecordClipping clipping_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCpuAdapterBackend(
    const FrozenBase& base, LoraAdapters& adapters, const BackendOptions& options) {
  if (options.proximal_coefficient != 0) {
    return absl::InvalidArgumentError("adapter training takes no proximal term");
  }
  if (absl::Status status = CheckAdaptersFit(base.config(), adapters); !status.ok()) {
    return status;
  }
  return std::make_unique<CpuAdapterBackend>(base, adapters, options);
}

}  // namespace fedmoe::model
