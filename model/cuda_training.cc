#include "model/cuda_training.h"

#include <algorithm>
#include <cmath>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/dense.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/axpy.h"
#include "kernels/cuda/collectives.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/dense.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/moe_routing.h"
#include "kernels/cuda/optimizer.h"
#include "kernels/device.h"

namespace fedmoe::model {
namespace {

namespace cuda = kernels::cuda;
using cuda::DeviceArray;
using cuda::DeviceBf16;
using cuda::ElementType;
using cuda::GemmProblem;
using cuda::MatrixOperand;

// Grows `array` to at least `size` values; what it held is not kept. Buffers only grow, so a
// run of same-shaped batches allocates once.
template <typename T>
absl::Status Reserve(DeviceArray<T>& array, int64_t size) {
  if (static_cast<int64_t>(array.size()) >= size) return absl::OkStatus();
  array = DeviceArray<T>();  // the old and the new one need not fit side by side
  absl::StatusOr<DeviceArray<T>> grown = DeviceArray<T>::Allocate(static_cast<size_t>(size));
  if (!grown.ok()) return grown.status();
  array = std::move(*grown);
  return absl::OkStatus();
}

// bf16 buffers are reserved only for passes with bf16 products and fp32 operand buffers only for
// fp32 ones; the other stays empty and its pointer null.
template <typename T>
absl::Status ReserveIf(bool wanted, DeviceArray<T>& array, int64_t size) {
  return wanted ? Reserve(array, size) : absl::OkStatus();
}

template <typename T>
T* DataIf(bool wanted, DeviceArray<T>& array) {
  return wanted ? array.data() : nullptr;
}

// One layer's saved activations, forward.h's LayerActivations on the device. Attention keeps
// each row's log-sum-exp in place of the probabilities.
struct LayerBuffers {
  DeviceArray<float> input;  // [rows, H]
  DeviceArray<float> attention_norm, attention_rstd;
  DeviceArray<DeviceBf16> attention_norm_bf16;
  DeviceArray<float> q, k, v, attention_output, logsumexp;
  DeviceArray<DeviceBf16> attention_output_bf16;
  DeviceArray<float> residual, moe_norm, moe_rstd;
  DeviceArray<DeviceBf16> moe_norm_bf16;
  DeviceArray<float> router_logits, router_probs, expert_weight;
  DeviceArray<int32_t> expert_index, offsets, slot_token, permuted_slot;
  DeviceArray<float> expert_input;  // [slots, H], fp32 passes
  DeviceArray<DeviceBf16> expert_input_bf16;
  DeviceArray<float> expert_gate, expert_up, expert_act;  // [slots, I]
  DeviceArray<DeviceBf16> expert_act_bf16;
  DeviceArray<float> expert_output;  // [slots, H]
  DeviceArray<float> shared_gate, shared_up, shared_act;
  DeviceArray<DeviceBf16> shared_act_bf16;
  // offsets on the host: the grouped products' sizes, read back once per layer and pass.
  std::vector<int32_t> host_offsets;
};

// The backward pass's buffers, backward.h's BackwardScratch on the device.
struct GradientBuffers {
  DeviceArray<float> d_logits, d_stream, d_norm, d_residual, d_attention, d_q, d_k, d_v;
  DeviceArray<DeviceBf16> d_out_bf16, d_q_bf16, d_k_bf16, d_v_bf16;
  DeviceArray<float> d_expert_out;
  DeviceArray<DeviceBf16> d_expert_out_bf16;
  DeviceArray<float> d_expert_weight, d_expert_in;
  DeviceArray<float> d_act, d_gate, d_up;  // [max(slots·I, rows·S)]
  DeviceArray<DeviceBf16> d_gate_bf16, d_up_bf16;
  DeviceArray<float> balance_gradient;  // [layers, experts], per step
  DeviceArray<float> d_probs, d_router_logits;
  DeviceArray<float> norm_scratch, attention_scratch;
};

// The widths of one pass (forward.h's names: H, Q, K, E, k, I, S).
struct PassShape {
  int64_t batch = 0, seq_len = 0, rows = 0, slots = 0;
  int64_t hidden = 0, q_width = 0, kv_width = 0, experts = 0, top_k = 0, inner = 0, shared = 0;
  int64_t vocab = 0;
  cuda::AttentionShape attention;
};

// A layer's expert weights by kind: w1() is e ↦ expert e's w1 offset, and so on.
struct ExpertWeights {
  const LayerOffsets& layer;
  auto w1() const {
    return [this](int64_t e) { return layer.experts[static_cast<size_t>(e)].w1; };
  }
  auto w2() const {
    return [this](int64_t e) { return layer.experts[static_cast<size_t>(e)].w2; };
  }
  auto w3() const {
    return [this](int64_t e) { return layer.experts[static_cast<size_t>(e)].w3; };
  }
};

class CudaTrainingBackend : public TrainingBackend {
 public:
  // On GPU `device`, with a cuBLAS handle made there.
  CudaTrainingBackend(const ModelParameters& parameters, const BackendOptions& options, int device,
                      cuda::Blas blas)
      : config_(parameters.config()),
        layout_(parameters.config()),
        options_(options),
        device_(device),
        blas_(std::move(blas)) {}

  // Uploads the parameters and allocates what does not depend on the batch's shape.
  absl::Status Initialize(const ModelParameters& parameters) {
    if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
    const auto total = static_cast<int64_t>(parameters.values().size());
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
    status.Update(parameters_.CopyFrom(parameters.values()));
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

    std::vector<cuda::ParameterRange> ranges;
    for (const TrainedRange& range : TrainedRanges(layout_, options_.trainable)) {
      ranges.push_back({range.offset, range.size, range.decay});
    }
    absl::StatusOr<cuda::DeviceRanges> device_ranges = cuda::DeviceRanges::Create(ranges);
    if (!device_ranges.ok()) return device_ranges.status();
    trainable_ranges_ = std::make_unique<cuda::DeviceRanges>(std::move(*device_ranges));
    layers_.resize(static_cast<size_t>(config_.num_hidden_layers));
    return cuda::Synchronize();
  }

  absl::StatusOr<LossBreakdown> AccumulateGradients(const Batch& batch,
                                                    const BackwardOptions& options) override {
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

  // One backward pass per record, each into a buffer of its own whose norm is taken on the
  // device; the clipped gradient is then added to the step's. The Gram norms and book-keeping
  // of the CPU twin (per_record_clipping.h) are not on the GPU yet: this is its materialised
  // form, exact and simple, and slower where records are many and short.
  absl::StatusOr<LossBreakdown> AccumulateClippedGradients(const Batch& batch,
                                                           const RecordRows& records,
                                                           const BackwardOptions& options,
                                                           double clip_norm, double routing_scale,
                                                           PrivateBatch& out) override {
    if (training_bf16()) {
      return absl::InvalidArgumentError("per-record clipping takes fp32 products only");
    }
    if (options_.trainable.embeddings) {
      return absl::InvalidArgumentError(
          "per-record clipping cannot train embeddings (a token's row mixes records)");
    }
    if (records.rows() != batch.batch * batch.seq_len) {
      return absl::InvalidArgumentError(absl::StrCat("the records lay out ", records.rows(),
                                                     " rows for a batch of ",
                                                     batch.batch * batch.seq_len));
    }
    if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
    const auto total = static_cast<int64_t>(gradients_.size());
    if (static_cast<int64_t>(record_gradients_.size()) < total) {
      if (absl::Status status = Reserve(record_gradients_, total); !status.ok()) return status;
      if (absl::Status status = record_gradients_.Zero(); !status.ok()) return status;
    }
    out.record_norms.clear();
    // A record's routed slots are what its pass adds to the histogram counters.
    std::vector<int64_t> counts_before(expert_counts_.size()), counts_after(expert_counts_.size());
    LossBreakdown step;
    double balance_rows = 0;
    for (int64_t r = 0; r < records.records(); ++r) {
      const int64_t first = records.row_begin[static_cast<size_t>(r)];
      const int64_t last = records.row_begin[static_cast<size_t>(r) + 1];
      if (first % batch.seq_len != 0 || last % batch.seq_len != 0) {
        return absl::InvalidArgumentError("a record does not hold whole windows");
      }
      Batch own;
      own.batch = (last - first) / batch.seq_len;
      own.seq_len = batch.seq_len;
      own.tokens.assign(batch.tokens.begin() + first, batch.tokens.begin() + last);
      own.targets.assign(batch.targets.begin() + first, batch.targets.begin() + last);
      for (const int32_t target : own.targets) own.predictions += target >= 0 ? 1 : 0;
      BackwardOptions alone = options;
      alone.per_record = nullptr;
      alone.step_share = 1;
      alone.predictions_in_step = static_cast<double>(std::max<int64_t>(own.predictions, 1));
      // The pass adds into gradients_: for this record, that is the zeroed buffer of its own.
      if (absl::Status status = expert_counts_.CopyTo(counts_before); !status.ok()) return status;
      std::swap(gradients_, record_gradients_);
      absl::StatusOr<LossBreakdown> loss = AccumulateGradients(own, alone);
      std::swap(gradients_, record_gradients_);
      if (!loss.ok()) return loss.status();
      if (absl::Status status = expert_counts_.CopyTo(counts_after); !status.ok()) return status;
      for (size_t i = 0; i < counts_after.size(); ++i) counts_after[i] -= counts_before[i];
      AddRecordRouting(counts_after, (last - first) * config_.num_experts_per_tok, routing_scale,
                       out.routing_sum);
      absl::Status status = cuda::SumOfSquares(record_gradients_.data(), *trainable_ranges_,
                                               norm_partials_.data(), norm_squared_.data());
      double norm_squared = 0;
      status.Update(norm_squared_.CopyTo({&norm_squared, 1}));
      if (!status.ok()) return status;
      const double norm = std::sqrt(norm_squared);
      out.record_norms.push_back(norm);
      status.Update(cuda::Axpy(static_cast<float>(norm > clip_norm ? clip_norm / norm : 1.0),
                               record_gradients_, gradients_));
      status.Update(record_gradients_.Zero());
      if (!status.ok()) return status;
      step.cross_entropy += loss->cross_entropy * alone.predictions_in_step;
      step.predictions += loss->predictions;
      step.balance_per_layer += loss->balance_per_layer * static_cast<double>(last - first);
      balance_rows += static_cast<double>(last - first);
    }
    step.cross_entropy /= options.predictions_in_step;
    if (balance_rows > 0) step.balance_per_layer /= balance_rows;
    return step;
  }

  absl::Status UpdateStepGradients(
      const std::function<absl::Status(std::span<float>)>& update) override {
    if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
    std::vector<float> host(gradients_.size());
    if (absl::Status status = gradients_.CopyTo(host); !status.ok()) return status;
    if (absl::Status status = update(host); !status.ok()) return status;
    return gradients_.CopyFrom(host);
  }

  absl::StatusOr<double> ApplyGradients(double learning_rate, double max_norm) override {
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
    const double correction1 = 1.0 - std::pow(options_.adamw.beta1, static_cast<double>(steps_));
    const double correction2 = 1.0 - std::pow(options_.adamw.beta2, static_cast<double>(steps_));
    const cuda::AdamWStep step{
        .beta1 = static_cast<float>(options_.adamw.beta1),
        .beta2 = static_cast<float>(options_.adamw.beta2),
        .epsilon = static_cast<float>(options_.adamw.epsilon),
        .step_size = static_cast<float>(learning_rate / correction1),
        .root_correction2 = static_cast<float>(std::sqrt(correction2)),
        .decay = static_cast<float>(learning_rate * options_.adamw.weight_decay),
        .max_norm = static_cast<float>(std::max(0.0, max_norm))};
    absl::Status status = cuda::AdamWUpdate(
        parameters_.data(), DataIf(training_bf16(), parameters_bf16_), gradients_.data(),
        first_moment_.data(), second_moment_.data(), ranges, step, norm_squared_.data());
    status.Update(gradients_.Zero());
    if (!status.ok()) return status;
    return std::sqrt(norm_squared);
  }

  absl::StatusOr<LossSum> Evaluate(const Batch& batch) override {
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

  absl::StatusOr<std::vector<std::vector<int64_t>>> ExpertSlots() override {
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

  absl::Status CopyGradientsTo(std::span<float> gradients) override {
    if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
    return gradients_.CopyTo(gradients);
  }

  absl::Status CopyParametersTo(ModelParameters& parameters) override {
    if (parameters.layout().total_size() != layout_.total_size()) {
      return absl::InvalidArgumentError("the parameters' config differs from the trained model's");
    }
    if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
    return parameters_.CopyTo(parameters.values());
  }

  // This replica's gradient buffer on its device, in the parameters' layout: what data
  // parallelism sums across replicas.
  float* gradient_buffer() { return gradients_.data(); }

 private:
  bool training_bf16() const { return options_.matmul_precision == MatMulPrecision::kBfloat16; }

  float* Parameter(int64_t offset) { return parameters_.data() + offset; }
  // Where a tensor's gradient goes, or null when it is not trained.
  float* Gradient(int64_t offset, TensorRole role) {
    return options_.trainable.Includes(role) ? gradients_.data() + offset : nullptr;
  }
  // A weight [out, in] as the b operand of x·weightᵀ (stored transposed) or of d_y·weight.
  MatrixOperand Weight(int64_t offset, bool bf16, bool transposed) {
    if (bf16) return {parameters_bf16_.data() + offset, ElementType::kBfloat16, transposed};
    return {parameters_.data() + offset, ElementType::kFloat32, transposed};
  }
  static MatrixOperand Activation(bool bf16, const float* fp32, const DeviceBf16* half,
                                  bool transposed = false) {
    if (bf16) return {half, ElementType::kBfloat16, transposed};
    return {fp32, ElementType::kFloat32, transposed};
  }

  // out [rows, out_features] = in · weightᵀ.
  absl::Status LinearForward(MatrixOperand in, MatrixOperand weight, float* out, int64_t rows,
                             int64_t in_features, int64_t out_features) {
    return blas_.MatMul(
        {.a = in, .b = weight, .c = out, .m = rows, .n = out_features, .k = in_features},
        /*accumulate=*/false);
  }

  // d_in (+)= d_out · weight (accumulating when asked), d_weight += d_outᵀ · in; nulls skipped.
  // `weight` is stored [out, in], not transposed; d_out is [rows, out].
  absl::Status LinearBackward(MatrixOperand in, MatrixOperand weight, MatrixOperand d_out,
                              float* d_in, bool accumulate_d_in, float* d_weight, int64_t rows,
                              int64_t in_features, int64_t out_features) {
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

  // LinearForward and LinearBackward per expert, over each expert's block of slots, with one
  // grouped cuBLAS call per product: `weight(e)` is expert e's weight [out, in].
  template <typename WeightOf>
  absl::Status ExpertLinearForward(const std::vector<int32_t>& offsets, MatrixOperand in,
                                   WeightOf weight, bool bf16, float* out, int64_t in_features,
                                   int64_t out_features) {
    return ExpertProducts(offsets, false, [&](int64_t e, int64_t first, int64_t count) {
      return GemmProblem{.a = Offset(in, first * in_features),
                         .b = Weight(weight(e), bf16, /*transposed=*/true),
                         .c = out + first * out_features,
                         .m = count,
                         .n = out_features,
                         .k = in_features};
    });
  }

  // d_in (+)= d_out·weight unless d_in is null; the weight's gradient += d_outᵀ·in when
  // `train`.
  template <typename WeightOf>
  absl::Status ExpertLinearBackward(const std::vector<int32_t>& offsets, MatrixOperand in,
                                    WeightOf weight, bool bf16, MatrixOperand d_out, float* d_in,
                                    bool accumulate_d_in, bool train, int64_t in_features,
                                    int64_t out_features) {
    absl::Status status;
    if (d_in != nullptr) {
      status.Update(
          ExpertProducts(offsets, accumulate_d_in, [&](int64_t e, int64_t first, int64_t count) {
            return GemmProblem{.a = Offset(d_out, first * out_features),
                               .b = Weight(weight(e), bf16, /*transposed=*/false),
                               .c = d_in + first * in_features,
                               .m = count,
                               .n = in_features,
                               .k = out_features};
          }));
    }
    if (train) {
      status.Update(ExpertProducts(offsets, true, [&](int64_t e, int64_t first, int64_t count) {
        return GemmProblem{.a = Transposed(Offset(d_out, first * out_features)),
                           .b = Offset(in, first * in_features),
                           .c = gradients_.data() + weight(e),
                           .m = out_features,
                           .n = in_features,
                           .k = count};
      }));
    }
    return status;
  }

  // One product per expert, in one grouped call: make(expert, first slot, slot count).
  template <typename MakeProblem>
  absl::Status ExpertProducts(const std::vector<int32_t>& offsets, bool accumulate,
                              MakeProblem make) {
    problems_.clear();
    for (size_t e = 0; e + 1 < offsets.size(); ++e) {
      problems_.push_back(
          make(static_cast<int64_t>(e), int64_t{offsets[e]}, int64_t{offsets[e + 1] - offsets[e]}));
    }
    return blas_.GroupedMatMul(problems_, accumulate);
  }

  // Checks the batch, uploads its tokens and targets, and sizes the forward buffers.
  absl::StatusOr<PassShape> Prepare(const Batch& batch) {
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
    PassShape shape;
    shape.batch = batch.batch;
    shape.seq_len = batch.seq_len;
    shape.rows = batch.batch * batch.seq_len;
    shape.top_k = config_.num_experts_per_tok;
    shape.slots = shape.rows * shape.top_k;
    shape.hidden = config_.hidden_size;
    shape.q_width = config_.query_width();
    shape.kv_width = config_.key_value_width();
    shape.experts = config_.num_local_experts;
    shape.inner = config_.intermediate_size;
    shape.shared = config_.shared_inner_size();
    shape.vocab = config_.vocab_size;
    shape.attention = {.batch = shape.batch,
                       .seq_len = shape.seq_len,
                       .heads = config_.num_attention_heads,
                       .kv_heads = config_.num_key_value_heads,
                       .head_dim = config_.head_dim,
                       .sliding_window = config_.sliding_window};
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
    if (shape.seq_len != rope_positions_) {
      const kernels::cpu::RopeTable table(shape.seq_len, config_.head_dim, config_.rope_theta);
      const int64_t values = shape.seq_len * (config_.head_dim / 2);
      status.Update(Reserve(rope_cos_, values));
      status.Update(Reserve(rope_sin_, values));
      if (!status.ok()) return status;
      status.Update(cuda::CopyHostToDevice(rope_cos_.data(), table.cos(0),
                                           static_cast<size_t>(values) * sizeof(float)));
      status.Update(cuda::CopyHostToDevice(rope_sin_.data(), table.sin(0),
                                           static_cast<size_t>(values) * sizeof(float)));
      rope_positions_ = status.ok() ? shape.seq_len : 0;
    }
    if (!status.ok()) return status;
    return shape;
  }

  absl::Status ReserveLayer(LayerBuffers& layer, const PassShape& s, bool bf16) {
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

  absl::Status ReserveBackward(const PassShape& s, bool bf16) {
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
    status.Update(Reserve(g.attention_scratch, cuda::FlashAttentionBackwardScratch(s.attention)));
    return status;
  }

  // The forward pass's buffers: every layer's for training, the first layer's alone (reused by
  // all) for evaluation.
  absl::Status ReserveForward(const PassShape& s, bool bf16, bool training) {
    absl::Status status;
    const size_t kept = training ? layers_.size() : 1;
    for (size_t i = 0; i < kept && status.ok(); ++i) {
      status.Update(ReserveLayer(layers_[i], s, bf16));
    }
    return status;
  }

  // A device out of memory for a batch's activations says so, and what to change. The
  // half-grown buffers are let go: kept, they would crowd out the next batch, which may be one
  // that fit before. The model, its gradient and optimizer state stay.
  absl::Status BatchTooLarge(const PassShape& s, const absl::Status& status) {
    if (!absl::IsResourceExhausted(status)) return status;
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
    return absl::ResourceExhaustedError(absl::StrCat(
        "GPU ", device_, " has no room for the activations of ", s.batch, " sequences of ",
        s.seq_len, " tokens; lower batch_size or seq_len, or raise gradient_accumulation (",
        status.message(), ")"));
  }

  // The forward pass over the uploaded tokens, into buffers ReserveForward sized. Training
  // keeps every layer's activations and counts the routing; evaluation reuses the first
  // layer's buffers for all layers.
  absl::Status Forward(const PassShape& s, bool bf16, bool training) {
    if (absl::Status status =
            cuda::EmbeddingForward(tokens_.data(), Parameter(layout_.embed_tokens()),
                                   layers_[0].input.data(), s.rows, s.hidden);
        !status.ok()) {
      return status;
    }
    for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
      LayerBuffers& layer = layers_[training ? static_cast<size_t>(i) : 0];
      float* next = i + 1 == config_.num_hidden_layers
                        ? final_input_.data()
                        : layers_[training ? static_cast<size_t>(i + 1) : 0].input.data();
      if (absl::Status status = AttentionBlock(layout_.layer(i), s, bf16, layer); !status.ok()) {
        return status;
      }
      if (absl::Status status = MoeBlock(i, s, bf16, training, layer, next); !status.ok()) {
        return status;
      }
    }
    absl::Status status = cuda::RmsNormForward(
        final_input_.data(), Parameter(layout_.final_norm()), final_norm_.data(), nullptr,
        final_rstd_.data(), s.rows, s.hidden, static_cast<float>(config_.rms_norm_eps));
    // The output head is fp32, as on the CPU.
    status.Update(LinearForward(Activation(false, final_norm_.data(), nullptr),
                                Weight(layout_.lm_head(), false, /*transposed=*/true),
                                logits_.data(), s.rows, s.hidden, s.vocab));
    return status;
  }

  cuda::AttentionArithmetic AttentionArithmeticFor(bool bf16) const {
    return bf16 && options_.tensor_core_attention ? cuda::AttentionArithmetic::kTensorFloat32
                                                  : cuda::AttentionArithmetic::kFloat32;
  }

  absl::Status AttentionBlock(const LayerOffsets& w, const PassShape& s, bool bf16,
                              LayerBuffers& layer) {
    const auto eps = static_cast<float>(config_.rms_norm_eps);
    absl::Status status =
        cuda::RmsNormForward(layer.input.data(), Parameter(w.input_layernorm),
                             layer.attention_norm.data(), DataIf(bf16, layer.attention_norm_bf16),
                             layer.attention_rstd.data(), s.rows, s.hidden, eps);
    const MatrixOperand n1 =
        Activation(bf16, layer.attention_norm.data(), layer.attention_norm_bf16.data());
    status.Update(LinearForward(n1, Weight(w.q_proj, bf16, true), layer.q.data(), s.rows, s.hidden,
                                s.q_width));
    status.Update(LinearForward(n1, Weight(w.k_proj, bf16, true), layer.k.data(), s.rows, s.hidden,
                                s.kv_width));
    status.Update(LinearForward(n1, Weight(w.v_proj, bf16, true), layer.v.data(), s.rows, s.hidden,
                                s.kv_width));
    status.Update(cuda::RopeRotate(layer.q.data(), rope_cos_.data(), rope_sin_.data(), s.batch,
                                   s.seq_len, config_.num_attention_heads, config_.head_dim, 1.0F));
    status.Update(cuda::RopeRotate(layer.k.data(), rope_cos_.data(), rope_sin_.data(), s.batch,
                                   s.seq_len, config_.num_key_value_heads, config_.head_dim, 1.0F));
    status.Update(cuda::FlashAttentionForward(layer.q.data(), layer.k.data(), layer.v.data(),
                                              layer.attention_output.data(), layer.logsumexp.data(),
                                              s.attention, AttentionArithmeticFor(bf16)));
    if (bf16) {
      status.Update(cuda::RoundToBf16(layer.attention_output.data(),
                                      layer.attention_output_bf16.data(), s.rows * s.q_width));
    }
    status.Update(LinearForward(
        Activation(bf16, layer.attention_output.data(), layer.attention_output_bf16.data()),
        Weight(w.o_proj, bf16, true), layer.residual.data(), s.rows, s.q_width, s.hidden));
    status.Update(cuda::AddInto(layer.residual.data(), layer.input.data(), s.rows * s.hidden));
    return status;
  }

  absl::Status MoeBlock(int64_t index, const PassShape& s, bool bf16, bool training,
                        LayerBuffers& layer, float* out) {
    const LayerOffsets& w = layout_.layer(index);
    absl::Status status = cuda::RmsNormForward(
        layer.residual.data(), Parameter(w.post_attention_layernorm), layer.moe_norm.data(),
        DataIf(bf16, layer.moe_norm_bf16), layer.moe_rstd.data(), s.rows, s.hidden,
        static_cast<float>(config_.rms_norm_eps));
    // The router is fp32 in either precision.
    status.Update(LinearForward(Activation(false, layer.moe_norm.data(), nullptr),
                                Weight(w.router, false, true), layer.router_logits.data(), s.rows,
                                s.hidden, s.experts));
    status.Update(cuda::RouterTopKForward(layer.router_logits.data(), layer.router_probs.data(),
                                          layer.expert_index.data(), layer.expert_weight.data(),
                                          s.rows, s.experts, s.top_k));
    status.Update(cuda::BuildExpertPermutation(
        layer.expert_index.data(), s.rows, s.top_k, s.experts, layer.offsets.data(),
        layer.slot_token.data(), layer.permuted_slot.data(), permutation_scratch_.data()));
    if (training) {
      status.Update(cuda::SumColumns(layer.router_probs.data(), s.rows, s.experts,
                                     column_sum_scratch_.data(),
                                     probability_sums_.data() + index * s.experts));
      status.Update(cuda::AddExpertCounts(layer.offsets.data(), s.experts,
                                          expert_counts_.data() + index * s.experts));
    }
    status.Update(cuda::GatherByExpert(layer.moe_norm.data(), layer.slot_token.data(),
                                       DataIf(!bf16, layer.expert_input),
                                       DataIf(bf16, layer.expert_input_bf16), s.slots, s.hidden));
    if (!status.ok()) return status;
    // The products' sizes: the one read-back of a layer.
    layer.host_offsets.resize(static_cast<size_t>(s.experts + 1));
    if (absl::Status copied =
            cuda::CopyDeviceToHost(layer.host_offsets.data(), layer.offsets.data(),
                                   layer.host_offsets.size() * sizeof(int32_t));
        !copied.ok()) {
      return copied;
    }

    const MatrixOperand grouped_in =
        Activation(bf16, layer.expert_input.data(), layer.expert_input_bf16.data());
    const int64_t h = s.hidden;
    const int64_t inner = s.inner;
    // gate = in·w1ᵀ, up = in·w3ᵀ, act = silu(gate)⊙up, out = act·w2ᵀ, per expert.
    const std::vector<int32_t>& offsets = layer.host_offsets;
    const ExpertWeights weights{w};
    status.Update(ExpertLinearForward(offsets, grouped_in, weights.w1(), bf16,
                                      layer.expert_gate.data(), h, inner));
    status.Update(ExpertLinearForward(offsets, grouped_in, weights.w3(), bf16,
                                      layer.expert_up.data(), h, inner));
    status.Update(cuda::SwiGluForward(layer.expert_gate.data(), layer.expert_up.data(),
                                      DataIf(!bf16, layer.expert_act),
                                      DataIf(bf16, layer.expert_act_bf16), s.slots * inner));
    status.Update(ExpertLinearForward(
        offsets, Activation(bf16, layer.expert_act.data(), layer.expert_act_bf16.data()),
        weights.w2(), bf16, layer.expert_output.data(), inner, h));

    // out = residual (+ the shared experts), then the routed experts are combined into it.
    if (s.shared > 0) {
      const MatrixOperand n2 = Activation(bf16, layer.moe_norm.data(), layer.moe_norm_bf16.data());
      status.Update(LinearForward(n2, Weight(w.shared.w1, bf16, true), layer.shared_gate.data(),
                                  s.rows, h, s.shared));
      status.Update(LinearForward(n2, Weight(w.shared.w3, bf16, true), layer.shared_up.data(),
                                  s.rows, h, s.shared));
      status.Update(cuda::SwiGluForward(layer.shared_gate.data(), layer.shared_up.data(),
                                        DataIf(!bf16, layer.shared_act),
                                        DataIf(bf16, layer.shared_act_bf16), s.rows * s.shared));
      status.Update(
          LinearForward(Activation(bf16, layer.shared_act.data(), layer.shared_act_bf16.data()),
                        Weight(w.shared.w2, bf16, true), out, s.rows, s.shared, h));
      status.Update(cuda::AddInto(out, layer.residual.data(), s.rows * h));
    } else {
      status.Update(cuda::CopyDeviceToDevice(out, layer.residual.data(),
                                             static_cast<size_t>(s.rows * h) * sizeof(float)));
    }
    status.Update(cuda::CombineExpertOutputs(layer.expert_output.data(), layer.expert_weight.data(),
                                             layer.permuted_slot.data(), out, s.rows, s.top_k, h));
    return status;
  }

  static MatrixOperand Offset(MatrixOperand operand, int64_t values) {
    const size_t bytes =
        operand.type == ElementType::kBfloat16 ? sizeof(DeviceBf16) : sizeof(float);
    operand.data = static_cast<const char*>(operand.data) + values * static_cast<int64_t>(bytes);
    return operand;
  }

  absl::StatusOr<LossSum> SumLosses(const Batch& batch, int64_t rows) {
    std::vector<float> losses(static_cast<size_t>(rows));
    if (absl::Status status =
            cuda::CopyDeviceToHost(losses.data(), losses_.data(), losses.size() * sizeof(float));
        !status.ok()) {
      return status;
    }
    LossSum sum;
    for (const float loss : losses) sum.total += loss;
    sum.predictions = std::count_if(batch.targets.begin(), batch.targets.end(),
                                    [](int32_t target) { return target >= 0; });
    return sum;
  }

  // backward.h's L_bal averaged over layers, from the routing counts and the probabilities'
  // column sums; with the balance term on (scale ≠ 0), every layer's gradient with respect to
  // the probabilities (one value per expert, the same on every row) goes to the device in one
  // copy, into scratch_.balance_gradient [layers, experts].
  absl::StatusOr<double> Balance(const PassShape& s, double scale, int64_t private_experts) {
    std::vector<double> sums(probability_sums_.size());
    if (absl::Status status = probability_sums_.CopyTo(sums); !status.ok()) return status;
    const auto experts = static_cast<size_t>(s.experts);
    std::vector<float> gradients(scale != 0 ? layers_.size() * experts : 0);
    std::vector<int64_t> slots(experts);
    double total = 0;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const std::vector<int32_t>& offsets = layers_[i].host_offsets;
      for (size_t e = 0; e < experts; ++e) slots[e] = offsets[e + 1] - offsets[e];
      total += BalanceLoss(slots, std::span<const double>(sums).subspan(i * experts, experts),
                           s.rows, s.top_k, scale,
                           scale != 0 ? std::span<float>(gradients).subspan(i * experts, experts)
                                      : std::span<float>(),
                           private_experts);
    }
    if (scale != 0) {
      if (absl::Status status = cuda::CopyHostToDevice(
              scratch_.balance_gradient.data(), gradients.data(), gradients.size() * sizeof(float));
          !status.ok()) {
        return status;
      }
    }
    return total / static_cast<double>(layers_.size());
  }

  absl::StatusOr<LossBreakdown> Backward(const PassShape& s, const Batch& batch,
                                         const BackwardOptions& options, bool bf16) {
    GradientBuffers& g = scratch_;
    const int64_t rows = s.rows;
    const int64_t h = s.hidden;

    // The loss, the output head and the final norm.
    if (absl::Status status = cuda::CrossEntropyBackward(
            logits_.data(), targets_.data(), g.d_logits.data(), losses_.data(), rows, s.vocab,
            static_cast<float>(1.0 / options.predictions_in_step));
        !status.ok()) {
      return status;
    }
    absl::StatusOr<LossSum> sum = SumLosses(batch, rows);
    if (!sum.ok()) return sum.status();
    const double balance_scale = options.balance_coefficient * options.step_share /
                                 static_cast<double>(config_.num_hidden_layers);
    absl::StatusOr<double> balance = Balance(s, balance_scale, options.private_experts);
    if (!balance.ok()) return balance.status();
    LossBreakdown loss;
    loss.cross_entropy = sum->total / options.predictions_in_step;
    loss.predictions = sum->predictions;
    loss.balance_per_layer = *balance;
    loss.balance = options.balance_coefficient * *balance * options.step_share;

    const TensorRole head_role =
        config_.tie_word_embeddings ? TensorRole::kEmbedding : TensorRole::kOutput;
    const MatrixOperand d_logits = Activation(false, g.d_logits.data(), nullptr);
    absl::Status status = LinearBackward(
        Activation(false, final_norm_.data(), nullptr), Weight(layout_.lm_head(), false, false),
        d_logits, g.d_norm.data(), false, Gradient(layout_.lm_head(), head_role), rows, h, s.vocab);
    status.Update(g.d_stream.Zero());
    status.Update(cuda::RmsNormBackward(final_input_.data(), Parameter(layout_.final_norm()),
                                        final_rstd_.data(), g.d_norm.data(), g.d_stream.data(),
                                        Gradient(layout_.final_norm(), TensorRole::kNorm),
                                        g.norm_scratch.data(), rows, h));
    if (!status.ok()) return status;

    // Below this layer nothing needs a gradient, so the walk stops there.
    const int64_t lowest_needed = LowestLayerNeedingGradient(layout_, config_, options_.trainable);
    for (int64_t i = config_.num_hidden_layers - 1; i >= lowest_needed; --i) {
      const bool need_input_gradient = i > lowest_needed || options_.trainable.embeddings;
      const bool need_moe_input_gradient =
          need_input_gradient || options_.trainable.attention || options_.trainable.norms;
      const float* balance_gradient =
          balance_scale != 0 ? g.balance_gradient.data() + i * s.experts : nullptr;
      if (absl::Status block = MoeBackward(i, s, bf16, need_moe_input_gradient, balance_gradient);
          !block.ok()) {
        return block;
      }
      if (!need_moe_input_gradient) break;
      if (absl::Status block = AttentionBackward(i, s, bf16); !block.ok()) return block;
    }
    if (options_.trainable.embeddings && lowest_needed == 0) {
      if (absl::Status embedding =
              cuda::EmbeddingBackward(tokens_.data(), g.d_stream.data(),
                                      gradients_.data() + layout_.embed_tokens(), rows, h);
          !embedding.ok()) {
        return embedding;
      }
    }
    return loss;
  }

  // MoE block: out = residual + shared(n2) + Σ_j w_j·expert_j(n2), n2 = rmsnorm(residual), with
  // d_stream the gradient of out. Leaves the gradient of the block's input in d_residual.
  absl::Status MoeBackward(int64_t index, const PassShape& s, bool bf16, bool need_input_gradient,
                           const float* balance_gradient) {
    GradientBuffers& g = scratch_;
    LayerBuffers& layer = layers_[static_cast<size_t>(index)];
    const LayerOffsets& w = layout_.layer(index);
    const int64_t rows = s.rows;
    const int64_t h = s.hidden;
    const int64_t inner = s.inner;
    float* d_n2 = need_input_gradient ? g.d_norm.data() : nullptr;
    absl::Status status = cuda::CopyDeviceToDevice(g.d_residual.data(), g.d_stream.data(),
                                                   static_cast<size_t>(rows * h) * sizeof(float));
    if (need_input_gradient) status.Update(g.d_norm.Zero());
    const MatrixOperand n2 = Activation(bf16, layer.moe_norm.data(), layer.moe_norm_bf16.data());

    if (s.shared > 0) {
      if (bf16) status.Update(cuda::RoundToBf16(g.d_stream.data(), g.d_out_bf16.data(), rows * h));
      const MatrixOperand d_out = Activation(bf16, g.d_stream.data(), g.d_out_bf16.data());
      // d_act = d_out·w2, d_w2 += d_outᵀ·act.
      status.Update(
          LinearBackward(Activation(bf16, layer.shared_act.data(), layer.shared_act_bf16.data()),
                         Weight(w.shared.w2, bf16, false), d_out, g.d_act.data(), false,
                         Gradient(w.shared.w2, TensorRole::kSharedExpert), rows, s.shared, h));
      status.Update(cuda::SwiGluBackward(layer.shared_gate.data(), layer.shared_up.data(),
                                         g.d_act.data(), DataIf(!bf16, g.d_gate),
                                         DataIf(bf16, g.d_gate_bf16), DataIf(!bf16, g.d_up),
                                         DataIf(bf16, g.d_up_bf16), rows * s.shared));
      const MatrixOperand d_gate = Activation(bf16, g.d_gate.data(), g.d_gate_bf16.data());
      const MatrixOperand d_up = Activation(bf16, g.d_up.data(), g.d_up_bf16.data());
      status.Update(LinearBackward(n2, Weight(w.shared.w1, bf16, false), d_gate, d_n2, true,
                                   Gradient(w.shared.w1, TensorRole::kSharedExpert), rows, h,
                                   s.shared));
      status.Update(LinearBackward(n2, Weight(w.shared.w3, bf16, false), d_up, d_n2, true,
                                   Gradient(w.shared.w3, TensorRole::kSharedExpert), rows, h,
                                   s.shared));
    }

    status.Update(cuda::CombineExpertOutputsBackward(
        layer.expert_output.data(), layer.expert_weight.data(), layer.permuted_slot.data(),
        g.d_stream.data(), DataIf(!bf16, g.d_expert_out), DataIf(bf16, g.d_expert_out_bf16),
        g.d_expert_weight.data(), rows, s.top_k, h));
    const MatrixOperand d_out = Activation(bf16, g.d_expert_out.data(), g.d_expert_out_bf16.data());
    const MatrixOperand act =
        Activation(bf16, layer.expert_act.data(), layer.expert_act_bf16.data());
    const MatrixOperand expert_in =
        Activation(bf16, layer.expert_input.data(), layer.expert_input_bf16.data());
    const bool train_experts = options_.trainable.routed_experts;
    const std::vector<int32_t>& offsets = layer.host_offsets;
    const ExpertWeights weights{w};
    // d_act = d_out·w2, d_w2 += d_outᵀ·act.
    status.Update(ExpertLinearBackward(offsets, act, weights.w2(), bf16, d_out, g.d_act.data(),
                                       false, train_experts, inner, h));
    status.Update(cuda::SwiGluBackward(layer.expert_gate.data(), layer.expert_up.data(),
                                       g.d_act.data(), DataIf(!bf16, g.d_gate),
                                       DataIf(bf16, g.d_gate_bf16), DataIf(!bf16, g.d_up),
                                       DataIf(bf16, g.d_up_bf16), s.slots * inner));
    // d_in = d_gate·w1 + d_up·w3, d_w1 += d_gateᵀ·in, d_w3 += d_upᵀ·in.
    float* d_in = need_input_gradient ? g.d_expert_in.data() : nullptr;
    status.Update(ExpertLinearBackward(offsets, expert_in, weights.w1(), bf16,
                                       Activation(bf16, g.d_gate.data(), g.d_gate_bf16.data()),
                                       d_in, false, train_experts, h, inner));
    status.Update(ExpertLinearBackward(offsets, expert_in, weights.w3(), bf16,
                                       Activation(bf16, g.d_up.data(), g.d_up_bf16.data()), d_in,
                                       true, train_experts, h, inner));
    if (need_input_gradient) {
      status.Update(cuda::GatherByExpertBackward(g.d_expert_in.data(), layer.permuted_slot.data(),
                                                 d_n2, rows, s.top_k, h));
    }

    const float* d_probs = nullptr;
    if (balance_gradient != nullptr) {
      status.Update(cuda::BroadcastRow(balance_gradient, g.d_probs.data(), rows, s.experts));
      d_probs = g.d_probs.data();
    }
    status.Update(cuda::RouterTopKBackward(layer.router_probs.data(), layer.expert_index.data(),
                                           g.d_expert_weight.data(), d_probs,
                                           g.d_router_logits.data(), rows, s.experts, s.top_k));
    status.Update(LinearBackward(Activation(false, layer.moe_norm.data(), nullptr),
                                 Weight(w.router, false, false),
                                 Activation(false, g.d_router_logits.data(), nullptr), d_n2, true,
                                 Gradient(w.router, TensorRole::kRouter), rows, h, s.experts));
    if (need_input_gradient) {
      status.Update(cuda::RmsNormBackward(
          layer.residual.data(), Parameter(w.post_attention_layernorm), layer.moe_rstd.data(), d_n2,
          g.d_residual.data(), Gradient(w.post_attention_layernorm, TensorRole::kNorm),
          g.norm_scratch.data(), rows, h));
    }
    return status;
  }

  // Attention block: residual = input + o_proj(attention(...)), with d_residual the gradient
  // of residual. Leaves the gradient of the layer's input in d_stream.
  absl::Status AttentionBackward(int64_t index, const PassShape& s, bool bf16) {
    GradientBuffers& g = scratch_;
    LayerBuffers& layer = layers_[static_cast<size_t>(index)];
    const LayerOffsets& w = layout_.layer(index);
    const int64_t rows = s.rows;
    const int64_t h = s.hidden;
    // The skip connection.
    absl::Status status = cuda::CopyDeviceToDevice(g.d_stream.data(), g.d_residual.data(),
                                                   static_cast<size_t>(rows * h) * sizeof(float));
    if (bf16) status.Update(cuda::RoundToBf16(g.d_residual.data(), g.d_out_bf16.data(), rows * h));
    status.Update(LinearBackward(
        Activation(bf16, layer.attention_output.data(), layer.attention_output_bf16.data()),
        Weight(w.o_proj, bf16, false), Activation(bf16, g.d_residual.data(), g.d_out_bf16.data()),
        g.d_attention.data(), false, Gradient(w.o_proj, TensorRole::kAttention), rows, s.q_width,
        h));
    status.Update(cuda::FlashAttentionBackward(
        layer.q.data(), layer.k.data(), layer.v.data(), layer.attention_output.data(),
        layer.logsumexp.data(), g.d_attention.data(), g.d_q.data(), g.d_k.data(), g.d_v.data(),
        g.attention_scratch.data(), s.attention, AttentionArithmeticFor(bf16)));
    status.Update(cuda::RopeRotate(g.d_q.data(), rope_cos_.data(), rope_sin_.data(), s.batch,
                                   s.seq_len, config_.num_attention_heads, config_.head_dim,
                                   -1.0F));
    status.Update(cuda::RopeRotate(g.d_k.data(), rope_cos_.data(), rope_sin_.data(), s.batch,
                                   s.seq_len, config_.num_key_value_heads, config_.head_dim,
                                   -1.0F));
    const MatrixOperand n1 =
        Activation(bf16, layer.attention_norm.data(), layer.attention_norm_bf16.data());
    struct Projection {
      int64_t weight;
      float* d_out;
      DeviceBf16* d_out_bf16;
      int64_t width;
    };
    const Projection projections[] = {{w.q_proj, g.d_q.data(), g.d_q_bf16.data(), s.q_width},
                                      {w.k_proj, g.d_k.data(), g.d_k_bf16.data(), s.kv_width},
                                      {w.v_proj, g.d_v.data(), g.d_v_bf16.data(), s.kv_width}};
    bool first = true;
    for (const Projection& projection : projections) {
      if (bf16) {
        status.Update(
            cuda::RoundToBf16(projection.d_out, projection.d_out_bf16, rows * projection.width));
      }
      status.Update(LinearBackward(n1, Weight(projection.weight, bf16, false),
                                   Activation(bf16, projection.d_out, projection.d_out_bf16),
                                   g.d_norm.data(), /*accumulate_d_in=*/!first,
                                   Gradient(projection.weight, TensorRole::kAttention), rows, h,
                                   projection.width));
      first = false;
    }
    status.Update(cuda::RmsNormBackward(
        layer.input.data(), Parameter(w.input_layernorm), layer.attention_rstd.data(),
        g.d_norm.data(), g.d_stream.data(), Gradient(w.input_layernorm, TensorRole::kNorm),
        g.norm_scratch.data(), rows, h));
    return status;
  }

  static MatrixOperand Transposed(MatrixOperand operand) {
    operand.transposed = true;
    return operand;
  }

  MoeConfig config_;
  ModelLayout layout_;
  BackendOptions options_;
  int device_;
  cuda::Blas blas_;
  std::vector<GemmProblem> problems_;

  DeviceArray<float> parameters_, gradients_, first_moment_, second_moment_;
  // DP-SGD: one record's gradient at a time, allocated at the first private micro-batch.
  DeviceArray<float> record_gradients_;
  // Ditto's anchor (BackendOptions::proximal_anchor), when its term is on.
  DeviceArray<float> proximal_anchor_;
  DeviceArray<DeviceBf16> parameters_bf16_;
  std::unique_ptr<cuda::DeviceRanges> trainable_ranges_;
  int64_t steps_ = 0;
  DeviceArray<double> norm_partials_, norm_squared_;
  DeviceArray<int64_t> expert_counts_;    // [layers, experts]
  DeviceArray<double> probability_sums_;  // [layers, experts] of the last training pass
  DeviceArray<double> column_sum_scratch_;

  DeviceArray<int32_t> tokens_, targets_, permutation_scratch_;
  DeviceArray<float> rope_cos_, rope_sin_;
  int64_t rope_positions_ = 0;
  std::vector<LayerBuffers> layers_;
  DeviceArray<float> final_input_, final_norm_, final_rstd_, logits_, losses_;
  GradientBuffers scratch_;
};

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
  std::vector<std::unique_ptr<CudaTrainingBackend>> replicas;
  for (int device = 0; device < devices; ++device) {
    // The handle belongs to the device current when it is made.
    if (absl::Status status = cuda::SetDevice(device); !status.ok()) return status;
    absl::StatusOr<cuda::Blas> blas = cuda::Blas::Create(
        options.concurrent_expert_products ? cuda::GroupedProducts::kConcurrentStreams
                                           : cuda::GroupedProducts::kGroupedCall);
    if (!blas.ok()) return blas.status();
    replicas.push_back(
        std::make_unique<CudaTrainingBackend>(parameters, options, device, std::move(*blas)));
    if (absl::Status status = replicas.back()->Initialize(parameters); !status.ok()) {
      return status;
    }
  }
  if (devices == 1) return std::move(replicas.front());
  absl::StatusOr<cuda::DeviceClique> clique = cuda::DeviceClique::Create(devices);
  if (!clique.ok()) return clique.status();
  return std::make_unique<DataParallelBackend>(parameters.layout(), options.trainable,
                                               std::move(replicas), std::move(*clique));
}

}  // namespace fedmoe::model
