// Data parallelism over the GPUs of one machine (internal/cuda_backend.h).
#include "model/internal/cuda_backend.h"

namespace fedmoe::model::internal {

namespace {

// Data parallelism over the GPUs of one machine: one replica per GPU, each driven by its own
// host thread during a micro-batch (a replica's pass waits on its device at every layer, so one
// thread for all would run them one after another).
class DataParallelBackend : public TrainingBackend {
 public:
  DataParallelBackend(const ModelLayout& layout, const TrainableSet& trainable,
                      std::vector<std::unique_ptr<CudaTrainingBackend>> replicas,
                      cuda::DeviceClique clique)
      : total_size_(layout.total_size()),
        replicas_(std::move(replicas)),
        clique_(std::move(clique)) {
    // Only the trained tensors' span of the gradient is summed: the rest stays zero.
    int64_t first = total_size_;
    int64_t end = 0;
    for (const TensorSpec& spec : layout.tensors()) {
      if (!trainable.Includes(spec.role)) continue;
      first = std::min(first, spec.offset);
      end = std::max(end, spec.offset + spec.size);
    }
    reduce_first_ = first;
    reduce_count_ = std::max<int64_t>(0, end - first);
  }

  absl::StatusOr<LossBreakdown> AccumulateGradients(const Batch& batch,
                                                    const BackwardOptions& options) override {
    const int64_t shards = std::min<int64_t>(static_cast<int64_t>(replicas_.size()), batch.batch);
    if (shards <= 1) return replicas_.front()->AccumulateGradients(batch, options);
    const std::vector<Batch> parts = Split(batch, shards);
    BackwardOptions share = options;
    share.step_share = options.step_share / static_cast<double>(shards);
    std::vector<absl::StatusOr<LossBreakdown>> losses(static_cast<size_t>(shards),
                                                      absl::InternalError("not run"));
    OnReplicas(shards,
               [&](size_t r) { losses[r] = replicas_[r]->AccumulateGradients(parts[r], share); });
    LossBreakdown total;
    for (const absl::StatusOr<LossBreakdown>& loss : losses) {
      if (!loss.ok()) return loss.status();
      total.cross_entropy += loss->cross_entropy;
      total.predictions += loss->predictions;
      total.balance += loss->balance;
      total.balance_per_layer += loss->balance_per_layer / static_cast<double>(shards);
    }
    return total;
  }

  absl::StatusOr<double> ApplyGradients(double learning_rate, double max_norm) override {
    std::vector<float*> buffers;
    for (const auto& replica : replicas_)
      buffers.push_back(replica->gradient_buffer() + reduce_first_);
    if (absl::Status status = clique_.SumInPlace(buffers, static_cast<size_t>(reduce_count_));
        !status.ok()) {
      return status;
    }
    // Every replica takes the same step from the same sum, so they stay equal.
    std::vector<absl::StatusOr<double>> norms(replicas_.size(), absl::InternalError("not run"));
    OnReplicas(static_cast<int64_t>(replicas_.size()),
               [&](size_t r) { norms[r] = replicas_[r]->ApplyGradients(learning_rate, max_norm); });
    for (const absl::StatusOr<double>& norm : norms) {
      if (!norm.ok()) return norm.status();
    }
    return norms.front();
  }

  absl::StatusOr<LossSum> Evaluate(const Batch& batch) override {
    return replicas_.front()->Evaluate(batch);
  }

  // DP-SGD runs on the first GPU alone: the others' gradients stay zero, so the sum that
  // ApplyGradients takes over the GPUs is its clipped, noised sum.
  absl::StatusOr<LossBreakdown> AccumulateClippedGradients(const Batch& batch,
                                                           const RecordRows& records,
                                                           const BackwardOptions& options,
                                                           double clip_norm, double routing_scale,
                                                           PrivateBatch& out) override {
    return replicas_.front()->AccumulateClippedGradients(batch, records, options, clip_norm,
                                                         routing_scale, out);
  }

  absl::Status UpdateStepGradients(
      const std::function<absl::Status(std::span<float>)>& update) override {
    return replicas_.front()->UpdateStepGradients(update);
  }

  absl::StatusOr<std::vector<std::vector<int64_t>>> ExpertSlots() override {
    std::vector<std::vector<int64_t>> total;
    for (const auto& replica : replicas_) {
      absl::StatusOr<std::vector<std::vector<int64_t>>> slots = replica->ExpertSlots();
      if (!slots.ok()) return slots.status();
      if (total.empty()) {
        total = std::move(*slots);
        continue;
      }
      for (size_t layer = 0; layer < total.size(); ++layer) {
        for (size_t expert = 0; expert < total[layer].size(); ++expert) {
          total[layer][expert] += (*slots)[layer][expert];
        }
      }
    }
    return total;
  }

  // The sum over replicas (before ApplyGradients each holds its own share).
  absl::Status CopyGradientsTo(std::span<float> gradients) override {
    if (static_cast<int64_t>(gradients.size()) != total_size_) {
      return absl::InvalidArgumentError(absl::StrCat("a gradient buffer of ", gradients.size(),
                                                     " values for a model of ", total_size_));
    }
    std::fill(gradients.begin(), gradients.end(), 0.0F);
    std::vector<float> replica_gradients(gradients.size());
    for (const auto& replica : replicas_) {
      if (absl::Status status = replica->CopyGradientsTo(replica_gradients); !status.ok()) {
        return status;
      }
      for (size_t i = 0; i < gradients.size(); ++i) gradients[i] += replica_gradients[i];
    }
    return absl::OkStatus();
  }

  absl::Status CopyParametersTo(ModelParameters& parameters) override {
    return replicas_.front()->CopyParametersTo(parameters);
  }

 private:
  // `batch`'s sequences in `shards` contiguous parts, as even as they divide.
  static std::vector<Batch> Split(const Batch& batch, int64_t shards) {
    std::vector<Batch> parts(static_cast<size_t>(shards));
    int64_t first = 0;
    for (int64_t r = 0; r < shards; ++r) {
      Batch& part = parts[static_cast<size_t>(r)];
      part.batch = batch.batch / shards + (r < batch.batch % shards ? 1 : 0);
      part.seq_len = batch.seq_len;
      const auto begin = static_cast<std::ptrdiff_t>(first * batch.seq_len);
      const auto end = static_cast<std::ptrdiff_t>((first + part.batch) * batch.seq_len);
      part.tokens.assign(batch.tokens.begin() + begin, batch.tokens.begin() + end);
      part.targets.assign(batch.targets.begin() + begin, batch.targets.begin() + end);
      part.predictions = std::count_if(part.targets.begin(), part.targets.end(),
                                       [](int32_t target) { return target >= 0; });
      first += part.batch;
    }
    return parts;
  }

  // run(r) for r < count, replica r's on a thread of its own (0's on the caller's).
  template <typename Run>
  static void OnReplicas(int64_t count, const Run& run) {
    std::vector<std::thread> threads;
    for (int64_t r = 1; r < count; ++r)
      threads.emplace_back([&run, r] { run(static_cast<size_t>(r)); });
    run(0);
    for (std::thread& thread : threads) thread.join();
  }

  int64_t total_size_;
  std::vector<std::unique_ptr<CudaTrainingBackend>> replicas_;
  cuda::DeviceClique clique_;
  int64_t reduce_first_ = 0;
  int64_t reduce_count_ = 0;
};

}  // namespace

std::unique_ptr<TrainingBackend> MakeDataParallelBackend(
    const ModelLayout& layout, const TrainableSet& trainable,
    std::vector<std::unique_ptr<CudaTrainingBackend>> replicas, cuda::DeviceClique clique) {
  return std::make_unique<DataParallelBackend>(layout, trainable, std::move(replicas),
                                               std::move(clique));
}

}  // namespace fedmoe::model::internal
