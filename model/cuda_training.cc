#include "model/cuda_training.h"

#include "model/internal/cuda_backend.h"

namespace fedmoe::model {

namespace cuda = kernels::cuda;

namespace internal {

absl::Status CudaTrainingBackend::Initialize(std::span<const float> values,
                                             const std::vector<TrainedRange>& trained) {
  if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
  const auto total = static_cast<int64_t>(values.size());
  const int64_t counters = config_.num_hidden_layers * config_.num_local_experts;
  absl::Status status;
  status.Update(Reserve(parameters_, total));
  status.Update(Reserve(gradients_, total));
  status.Update(Reserve(first_moment_, total));
  status.Update(Reserve(second_moment_, total));
  status.Update(ReserveIf(training_bf16(), parameters_bf16_, total));
  status.Update(ReserveIf(options_.proximal_coefficient > 0, proximal_anchor_, total));
  status.Update(Reserve(expert_counts_, counters));
  status.Update(Reserve(probability_sums_, counters));
  status.Update(Reserve(norm_partials_, cuda::kSumOfSquaresPartials));
  status.Update(Reserve(norm_squared_, 1));
  if (absl::IsResourceExhausted(status)) {
    const double bytes_per_value = training_bf16() ? 18 : 16;
    return absl::ResourceExhaustedError(
        absl::StrCat("GPU ", device_, " cannot hold the model: its ", total,
                     " parameters with their gradient and AdamW state take ",
                     absl::SixDigits(bytes_per_value * static_cast<double>(total) / (1 << 30)),
                     " GiB (", status.message(), ")"));
  }
  if (!status.ok()) return status;
  status.Update(parameters_.CopyFrom(values));
  if (options_.proximal_coefficient > 0) {
    status.Update(proximal_anchor_.CopyFrom(options_.proximal_anchor));
  }
  status.Update(gradients_.Zero());
  status.Update(first_moment_.Zero());
  status.Update(second_moment_.Zero());
  status.Update(expert_counts_.Zero());
  if (training_bf16()) {
    // The frozen tensors' working copy, rounded once; AdamW rounds the trained ones anew.
    status.Update(cuda::RoundToBf16(parameters_.data(), parameters_bf16_.data(), total));
  }
  if (!status.ok()) return status;

  std::vector<kernels::ParameterRange> ranges;
  for (const TrainedRange& range : trained) {
    ranges.push_back({range.offset, range.size, range.decay});
  }
  absl::StatusOr<cuda::DeviceRanges> device_ranges = cuda::DeviceRanges::Create(ranges);
  if (!device_ranges.ok()) return device_ranges.status();
  trainable_ranges_ = std::make_unique<cuda::DeviceRanges>(std::move(*device_ranges));
  layers_.resize(static_cast<size_t>(config_.num_hidden_layers));
  return cuda::Synchronize();
}

absl::StatusOr<LossBreakdown> CudaTrainingBackend::AccumulateGradients(
    const Batch& batch, const BackwardOptions& options) {
  if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
  absl::StatusOr<PassShape> shape = Prepare(batch);
  if (!shape.ok()) return shape.status();
  const bool bf16 = training_bf16();
  absl::Status reserved = ReserveForward(*shape, bf16, /*training=*/true);
  reserved.Update(ReserveBackward(*shape, bf16));
  if (!reserved.ok()) return BatchTooLarge(*shape, reserved);
  if (absl::Status status = Forward(*shape, bf16, /*training=*/true); !status.ok()) {
    return status;
  }
  return Backward(*shape, batch, options, bf16);
}

absl::Status CudaTrainingBackend::UpdateStepGradients(
    const std::function<absl::Status(std::span<float>)>& update) {
  if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
  std::vector<float> host(gradients_.size());
  if (absl::Status status = gradients_.CopyTo(host); !status.ok()) return status;
  if (absl::Status status = update(host); !status.ok()) return status;
  return gradients_.CopyFrom(host);
}

absl::StatusOr<double> CudaTrainingBackend::ApplyGradients(double learning_rate, double max_norm) {
  if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
  const cuda::DeviceRanges& ranges = *trainable_ranges_;
  if (options_.proximal_coefficient > 0) {
    // Ditto's pull toward the anchor, as the CPU twin adds it.
    const auto pull = static_cast<float>(2 * options_.proximal_coefficient);
    absl::Status status = cuda::Axpy(pull, parameters_, gradients_);
    status.Update(cuda::Axpy(-pull, proximal_anchor_, gradients_));
    if (!status.ok()) return status;
  }
  if (absl::Status status = cuda::SumOfSquares(gradients_.data(), ranges, norm_partials_.data(),
                                               norm_squared_.data());
      !status.ok()) {
    return status;
  }
  double norm_squared = 0;
  if (absl::Status status = norm_squared_.CopyTo({&norm_squared, 1}); !status.ok()) {
    return status;
  }
  ++steps_;
  const kernels::AdamWStep step =
      kernels::MakeAdamWStep(options_.adamw.beta1, options_.adamw.beta2, options_.adamw.epsilon,
                             options_.adamw.weight_decay, learning_rate, steps_, max_norm);
  absl::Status status = cuda::AdamWUpdate(
      parameters_.data(), DataIf(training_bf16(), parameters_bf16_), gradients_.data(),
      first_moment_.data(), second_moment_.data(), ranges, step, norm_squared_.data());
  status.Update(gradients_.Zero());
  if (!status.ok()) return status;
  return std::sqrt(norm_squared);
}

absl::StatusOr<LossSum> CudaTrainingBackend::Evaluate(const Batch& batch) {
  if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
  absl::StatusOr<PassShape> shape = Prepare(batch);
  if (!shape.ok()) return shape.status();
  if (absl::Status reserved = ReserveForward(*shape, /*bf16=*/false, /*training=*/false);
      !reserved.ok()) {
    return BatchTooLarge(*shape, reserved);
  }
  if (absl::Status status = Forward(*shape, /*bf16=*/false, /*training=*/false); !status.ok()) {
    return status;
  }
  if (absl::Status status = cuda::CrossEntropyForward(logits_.data(), targets_.data(),
                                                      losses_.data(), shape->rows, shape->vocab);
      !status.ok()) {
    return status;
  }
  return SumLosses(batch, shape->rows);
}

absl::StatusOr<std::vector<std::vector<int64_t>>> CudaTrainingBackend::ExpertSlots() {
  if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
  std::vector<int64_t> flat(expert_counts_.size());
  if (absl::Status status = expert_counts_.CopyTo(flat); !status.ok()) return status;
  const auto experts = static_cast<size_t>(config_.num_local_experts);
  std::vector<std::vector<int64_t>> slots;
  for (size_t first = 0; first < flat.size(); first += experts) {
    slots.emplace_back(flat.begin() + static_cast<std::ptrdiff_t>(first),
                       flat.begin() + static_cast<std::ptrdiff_t>(first + experts));
  }
  return slots;
}

absl::Status CudaTrainingBackend::LinearForward(MatrixOperand in, MatrixOperand weight, float* out,
                                                int64_t rows, int64_t in_features,
                                                int64_t out_features) {
  return blas_.MatMul(
      {.a = in, .b = weight, .c = out, .m = rows, .n = out_features, .k = in_features},
      /*accumulate=*/false);
}

absl::Status CudaTrainingBackend::LinearBackward(MatrixOperand in, MatrixOperand weight,
                                                 MatrixOperand d_out, float* d_in,
                                                 bool accumulate_d_in, float* d_weight,
                                                 int64_t rows, int64_t in_features,
                                                 int64_t out_features) {
  absl::Status status;
  if (d_in != nullptr) {
    status.Update(blas_.MatMul(
        {.a = d_out, .b = weight, .c = d_in, .m = rows, .n = in_features, .k = out_features},
        accumulate_d_in));
  }
  if (d_weight != nullptr) {
    MatrixOperand d_out_transposed = d_out;
    d_out_transposed.transposed = true;
    status.Update(blas_.MatMul({.a = d_out_transposed,
                                .b = in,
                                .c = d_weight,
                                .m = out_features,
                                .n = in_features,
                                .k = rows},
                               /*accumulate=*/true));
  }
  return status;
}

PassShape CudaTrainingBackend::PassShapeOf(int64_t batch, int64_t seq_len) const {
  PassShape shape;
  shape.batch = batch;
  shape.seq_len = seq_len;
  shape.rows = batch * seq_len;
  shape.top_k = config_.num_experts_per_tok;
  shape.slots = shape.rows * shape.top_k;
  shape.hidden = config_.hidden_size;
  shape.q_width = config_.query_width();
  shape.kv_width = config_.key_value_width();
  shape.experts = config_.num_local_experts;
  shape.inner = config_.intermediate_size;
  shape.shared = config_.shared_inner_size();
  shape.vocab = config_.vocab_size;
  shape.attention = {.batch = batch,
                     .seq_len = seq_len,
                     .heads = config_.num_attention_heads,
                     .kv_heads = config_.num_key_value_heads,
                     .head_dim = config_.head_dim,
                     .sliding_window = config_.sliding_window};
  return shape;
}

absl::Status CudaTrainingBackend::UploadRope(int64_t positions) {
  const kernels::cpu::RopeTable table(positions, config_.head_dim, config_.rope_theta);
  const int64_t values = positions * (config_.head_dim / 2);
  absl::Status status = Reserve(rope_cos_, values);
  status.Update(Reserve(rope_sin_, values));
  if (!status.ok()) return status;
  status.Update(cuda::CopyHostToDevice(rope_cos_.data(), table.cos(0),
                                       static_cast<size_t>(values) * sizeof(float)));
  status.Update(cuda::CopyHostToDevice(rope_sin_.data(), table.sin(0),
                                       static_cast<size_t>(values) * sizeof(float)));
  rope_positions_ = status.ok() ? positions : 0;
  return status;
}

absl::StatusOr<PassShape> CudaTrainingBackend::Prepare(const Batch& batch) {
  if (absl::Status status = CheckTokens(config_, batch.tokens, batch.batch, batch.seq_len);
      !status.ok()) {
    return status;
  }
  if (batch.targets.size() != batch.tokens.size()) {
    return absl::InvalidArgumentError(absl::StrCat("got ", batch.targets.size(), " targets for ",
                                                   batch.tokens.size(), " positions"));
  }
  for (size_t i = 0; i < batch.targets.size(); ++i) {
    if (batch.targets[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("target ", batch.targets[i], " at position ",
                                                     i, " is outside the vocabulary"));
    }
  }
  const PassShape shape = PassShapeOf(batch.batch, batch.seq_len);
  if (absl::Status status = cuda::CheckAttentionShape(shape.attention); !status.ok()) {
    return status;
  }
  absl::Status status;
  status.Update(Reserve(tokens_, shape.rows));
  status.Update(Reserve(targets_, shape.rows));
  status.Update(Reserve(final_input_, shape.rows * shape.hidden));
  status.Update(Reserve(final_norm_, shape.rows * shape.hidden));
  status.Update(Reserve(final_rstd_, shape.rows));
  status.Update(Reserve(logits_, shape.rows * shape.vocab));
  status.Update(Reserve(losses_, shape.rows));
  status.Update(
      Reserve(permutation_scratch_, cuda::ExpertPermutationScratch(shape.slots, shape.experts)));
  status.Update(Reserve(column_sum_scratch_, cuda::SumColumnsScratch(shape.rows, shape.experts)));
  if (!status.ok()) return BatchTooLarge(shape, status);
  status.Update(cuda::CopyHostToDevice(tokens_.data(), batch.tokens.data(),
                                       batch.tokens.size() * sizeof(int32_t)));
  status.Update(cuda::CopyHostToDevice(targets_.data(), batch.targets.data(),
                                       batch.targets.size() * sizeof(int32_t)));
  if (shape.seq_len != rope_positions_) status.Update(UploadRope(shape.seq_len));
  if (!status.ok()) return status;
  return shape;
}

absl::Status CudaTrainingBackend::ReserveLayer(LayerBuffers& layer, const PassShape& s, bool bf16) {
  const int64_t rows = s.rows;
  absl::Status status;
  status.Update(Reserve(layer.input, rows * s.hidden));
  status.Update(Reserve(layer.attention_norm, rows * s.hidden));
  status.Update(Reserve(layer.attention_rstd, rows));
  status.Update(ReserveIf(bf16, layer.attention_norm_bf16, rows * s.hidden));
  status.Update(Reserve(layer.q, rows * s.q_width));
  status.Update(Reserve(layer.k, rows * s.kv_width));
  status.Update(Reserve(layer.v, rows * s.kv_width));
  status.Update(Reserve(layer.attention_output, rows * s.q_width));
  status.Update(Reserve(layer.logsumexp, rows * config_.num_attention_heads));
  status.Update(ReserveIf(bf16, layer.attention_output_bf16, rows * s.q_width));
  status.Update(Reserve(layer.residual, rows * s.hidden));
  status.Update(Reserve(layer.moe_norm, rows * s.hidden));
  status.Update(Reserve(layer.moe_rstd, rows));
  status.Update(ReserveIf(bf16, layer.moe_norm_bf16, rows * s.hidden));
  status.Update(Reserve(layer.router_logits, rows * s.experts));
  status.Update(Reserve(layer.router_probs, rows * s.experts));
  status.Update(Reserve(layer.expert_weight, s.slots));
  status.Update(Reserve(layer.expert_index, s.slots));
  status.Update(Reserve(layer.offsets, s.experts + 1));
  status.Update(Reserve(layer.slot_token, s.slots));
  status.Update(Reserve(layer.permuted_slot, s.slots));
  status.Update(ReserveIf(!bf16, layer.expert_input, s.slots * s.hidden));
  status.Update(ReserveIf(bf16, layer.expert_input_bf16, s.slots * s.hidden));
  status.Update(Reserve(layer.expert_gate, s.slots * s.inner));
  status.Update(Reserve(layer.expert_up, s.slots * s.inner));
  status.Update(ReserveIf(!bf16, layer.expert_act, s.slots * s.inner));
  status.Update(ReserveIf(bf16, layer.expert_act_bf16, s.slots * s.inner));
  status.Update(Reserve(layer.expert_output, s.slots * s.hidden));
  if (s.shared > 0) {
    status.Update(Reserve(layer.shared_gate, rows * s.shared));
    status.Update(Reserve(layer.shared_up, rows * s.shared));
    status.Update(ReserveIf(!bf16, layer.shared_act, rows * s.shared));
    status.Update(ReserveIf(bf16, layer.shared_act_bf16, rows * s.shared));
  }
  return status;
}

absl::Status CudaTrainingBackend::ReserveBackward(const PassShape& s, bool bf16) {
  GradientBuffers& g = scratch_;
  const int64_t rows = s.rows;
  const int64_t inner_values = std::max(s.slots * s.inner, rows * s.shared);
  absl::Status status;
  status.Update(Reserve(g.d_logits, rows * s.vocab));
  status.Update(Reserve(g.d_stream, rows * s.hidden));
  status.Update(Reserve(g.d_norm, rows * s.hidden));
  status.Update(Reserve(g.d_residual, rows * s.hidden));
  status.Update(Reserve(g.d_attention, rows * s.q_width));
  status.Update(Reserve(g.d_q, rows * s.q_width));
  status.Update(Reserve(g.d_k, rows * s.kv_width));
  status.Update(Reserve(g.d_v, rows * s.kv_width));
  status.Update(ReserveIf(bf16, g.d_out_bf16, rows * s.hidden));
  status.Update(ReserveIf(bf16, g.d_q_bf16, rows * s.q_width));
  status.Update(ReserveIf(bf16, g.d_k_bf16, rows * s.kv_width));
  status.Update(ReserveIf(bf16, g.d_v_bf16, rows * s.kv_width));
  status.Update(ReserveIf(!bf16, g.d_expert_out, s.slots * s.hidden));
  status.Update(ReserveIf(bf16, g.d_expert_out_bf16, s.slots * s.hidden));
  status.Update(Reserve(g.d_expert_weight, s.slots));
  status.Update(Reserve(g.d_expert_in, s.slots * s.hidden));
  status.Update(Reserve(g.d_act, inner_values));
  status.Update(ReserveIf(!bf16, g.d_gate, inner_values));
  status.Update(ReserveIf(!bf16, g.d_up, inner_values));
  status.Update(ReserveIf(bf16, g.d_gate_bf16, inner_values));
  status.Update(ReserveIf(bf16, g.d_up_bf16, inner_values));
  status.Update(Reserve(g.balance_gradient, config_.num_hidden_layers * s.experts));
  status.Update(Reserve(g.d_probs, rows * s.experts));
  status.Update(Reserve(g.d_router_logits, rows * s.experts));
  status.Update(Reserve(g.norm_scratch, cuda::RmsNormBackwardScratch(rows, s.hidden)));
  status.Update(Reserve(g.attention_scratch, cuda::CausalAttentionBackwardScratch(s.attention)));
  return status;
}

absl::Status CudaTrainingBackend::ReserveForward(const PassShape& s, bool bf16, bool training) {
  absl::Status status;
  const size_t kept = training ? layers_.size() : 1;
  for (size_t i = 0; i < kept && status.ok(); ++i) {
    status.Update(ReserveLayer(layers_[i], s, bf16));
  }
  return status;
}

void CudaTrainingBackend::ReleaseActivations() {
  for (LayerBuffers& layer : layers_) layer = LayerBuffers();
  scratch_ = GradientBuffers();
  tokens_ = DeviceArray<int32_t>();
  targets_ = DeviceArray<int32_t>();
  permutation_scratch_ = DeviceArray<int32_t>();
  column_sum_scratch_ = DeviceArray<double>();
  for (DeviceArray<float>* buffer :
       {&final_input_, &final_norm_, &final_rstd_, &logits_, &losses_, &rope_cos_, &rope_sin_}) {
    *buffer = DeviceArray<float>();
  }
  rope_positions_ = 0;
}

absl::Status CudaTrainingBackend::BatchTooLarge(const PassShape& s, const absl::Status& status) {
  if (!absl::IsResourceExhausted(status)) return status;
  ReleaseActivations();
  return absl::ResourceExhaustedError(absl::StrCat(
      "GPU ", device_, " has no room for the activations of ", s.batch, " sequences of ", s.seq_len,
      " tokens; lower batch_size or seq_len, or raise gradient_accumulation (", status.message(),
      ")"));
}

}  // namespace internal

absl::Status CheckCudaTakesModel(const MoeConfig& config) {
  if (config.num_local_experts > cuda::kMaxExperts) {
    return absl::InvalidArgumentError(absl::StrCat("the CUDA kernels route to at most ",
                                                   cuda::kMaxExperts, " experts, not ",
                                                   config.num_local_experts));
  }
  const cuda::AttentionShape one_token{.batch = 1,
                                       .seq_len = 1,
                                       .heads = config.num_attention_heads,
                                       .kv_heads = config.num_key_value_heads,
                                       .head_dim = config.head_dim,
                                       .sliding_window = config.sliding_window};
  return cuda::CheckAttentionShape(one_token);
}

absl::StatusOr<std::unique_ptr<TrainingBackend>> CreateCudaTrainingBackend(
    const ModelParameters& parameters, const BackendOptions& options) {
  if (absl::Status status = CheckCudaTakesModel(parameters.config()); !status.ok()) {
    return status;
  }
  if (absl::Status status = CheckProximalAnchor(options, parameters); !status.ok()) return status;
  int devices = options.devices;
  if (devices < 0) {
    return absl::InvalidArgumentError(absl::StrCat("a negative number of GPUs: ", devices));
  }
  if (devices == 0) {
    const absl::StatusOr<int> visible = kernels::CudaDeviceCount();
    devices = visible.ok() && *visible > 0 ? *visible : 1;
  }
  std::vector<std::unique_ptr<internal::CudaTrainingBackend>> replicas;
  for (int device = 0; device < devices; ++device) {
    // The handle belongs to the device current when it is made.
    if (absl::Status status = cuda::SetDevice(device); !status.ok()) return status;
    absl::StatusOr<cuda::Blas> blas = cuda::Blas::Create(
        options.concurrent_expert_products ? cuda::GroupedProducts::kConcurrentStreams
                                           : cuda::GroupedProducts::kGroupedCall);
    if (!blas.ok()) return blas.status();
    replicas.push_back(std::make_unique<internal::CudaTrainingBackend>(parameters.config(), options,
                                                                       device, std::move(*blas)));
    if (absl::Status status = replicas.back()->Initialize(parameters); !status.ok()) {
      return status;
    }
  }
  if (devices == 1) return std::move(replicas.front());
  absl::StatusOr<cuda::DeviceClique> clique = cuda::DeviceClique::Create(devices);
  if (!clique.ok()) return clique.status();
  return internal::MakeDataParallelBackend(parameters.layout(), options.trainable,
                                           std::move(replicas), std::move(*clique));
}

}  // namespace fedmoe::model
