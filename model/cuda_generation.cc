// The GPU's decoder (cuda_generation.h): CudaAdapterBackend's forward pass, step for step as
// generation.cc's BatchDecoder runs it on the CPU, over keys and values kept on the device.
#include "model/cuda_generation.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "model/cuda_training.h"
#include "model/internal/cuda_adapter_backend.h"

namespace fedmoe::model {

namespace internal {

absl::Status CudaAdapterBackend::Decode(std::span<const DecodeSequence> sequences,
                                        std::span<float> logits) {
  if (absl::Status selected = cuda::SetDevice(device_); !selected.ok()) return selected;
  std::vector<int32_t> tokens;
  for (const DecodeSequence& sequence : sequences) {
    tokens.insert(tokens.end(), sequence.tokens.begin(), sequence.tokens.end());
  }
  const auto rows = static_cast<int64_t>(tokens.size());
  const auto count = static_cast<int64_t>(sequences.size());
  // The step's rows are one sequence to the row-wise products and the MoE block; attention
  // runs per sequence below.
  const PassShape s = PassShapeOf(1, rows);
  const auto shape_at = [this](int64_t length) {
    return cuda::AttentionShape{.batch = 1,
                                .seq_len = length,
                                .heads = config_.num_attention_heads,
                                .kv_heads = config_.num_key_value_heads,
                                .head_dim = config_.head_dim,
                                .sliding_window = config_.sliding_window};
  };
  int64_t attention_scratch = 1;
  for (const DecodeSequence& sequence : sequences) {
    const auto new_rows = static_cast<int64_t>(sequence.tokens.size());
    attention_scratch = std::max(attention_scratch,
                                 cuda::CachedAttentionScratch(new_rows, sequence.first,
                                                              shape_at(sequence.first + new_rows)));
  }
  absl::Status status = ReserveForward(s, /*bf16=*/false, /*training=*/false);
  status.Update(Reserve(tokens_, rows));
  status.Update(Reserve(final_input_, rows * s.hidden));
  status.Update(Reserve(last_rows_, count * s.hidden));
  status.Update(Reserve(final_norm_, count * s.hidden));
  status.Update(Reserve(final_rstd_, count));
  status.Update(Reserve(logits_, count * s.vocab));
  status.Update(Reserve(permutation_scratch_, cuda::ExpertPermutationScratch(s.slots, s.experts)));
  status.Update(Reserve(cached_attention_scratch_, attention_scratch));
  if (!status.ok()) {
    // The half-grown buffers go, so that a smaller step fits again.
    ReleaseActivations();
    return absl::ResourceExhaustedError(absl::StrCat("the GPU has no room for a decode step of ",
                                                     rows, " tokens over ", count,
                                                     " sequences: ", status.message()));
  }
  if (rope_positions_ != config_.max_position_embeddings) {
    status.Update(UploadRope(config_.max_position_embeddings));
  }
  status.Update(
      cuda::CopyHostToDevice(tokens_.data(), tokens.data(), tokens.size() * sizeof(int32_t)));
  absl::StatusOr<const float*> table = EmbeddingTable();
  if (!table.ok()) return table.status();
  status.Update(
      cuda::EmbeddingForward(tokens_.data(), *table, layers_[0].input.data(), rows, s.hidden));

  // One layer's buffers serve every layer, as in evaluation.
  LayerBuffers& layer = layers_[0];
  LowBuffers& low = lows_[0];
  const size_t kv_bytes = static_cast<size_t>(s.kv_width) * sizeof(float);
  for (int64_t i = 0; i < config_.num_hidden_layers && status.ok(); ++i) {
    status.Update(AdaptedQkv(i, s, layer, low));
    int64_t row = 0;
    for (const DecodeSequence& sequence : sequences) {
      const auto new_rows = static_cast<int64_t>(sequence.tokens.size());
      float* q = layer.q.data() + row * s.q_width;
      float* k = layer.k.data() + row * s.kv_width;
      const float* v = layer.v.data() + row * s.kv_width;
      float* keys = sequence.keys[static_cast<size_t>(i)];
      float* values = sequence.values[static_cast<size_t>(i)];
      status.Update(cuda::RopeForwardAt(q, new_rows, config_.num_attention_heads, sequence.first,
                                        RopeTable()));
      status.Update(cuda::RopeForwardAt(k, new_rows, config_.num_key_value_heads, sequence.first,
                                        RopeTable()));
      const auto bytes = static_cast<size_t>(new_rows) * kv_bytes;
      status.Update(cuda::CopyDeviceToDevice(keys + sequence.first * s.kv_width, k, bytes));
      status.Update(cuda::CopyDeviceToDevice(values + sequence.first * s.kv_width, v, bytes));
      status.Update(cuda::CachedAttentionForward(
          q, keys, values, layer.attention_output.data() + row * s.q_width, new_rows,
          sequence.first, shape_at(sequence.first + new_rows), cached_attention_scratch_.data()));
      row += new_rows;
    }
    status.Update(AdaptedAttentionOutput(i, s, layer, low));
    float* next = i + 1 == config_.num_hidden_layers ? final_input_.data() : layer.input.data();
    status.Update(AdaptedMoe(i, s, /*training=*/false, layer, low, next));
  }
  if (!status.ok()) return status;

  // Only each sequence's last row's next token is wanted.
  const size_t row_bytes = static_cast<size_t>(s.hidden) * sizeof(float);
  int64_t end = 0;
  for (int64_t q = 0; q < count; ++q) {
    end += static_cast<int64_t>(sequences[static_cast<size_t>(q)].tokens.size());
    status.Update(cuda::CopyDeviceToDevice(last_rows_.data() + q * s.hidden,
                                           final_input_.data() + (end - 1) * s.hidden, row_bytes));
  }
  status.Update(cuda::RmsNormForward(last_rows_.data(), base_.vector(layout_.final_norm()),
                                     final_norm_.data(), nullptr, final_rstd_.data(), count,
                                     s.hidden, static_cast<float>(config_.rms_norm_eps)));
  status.Update(cuda::FrozenLinearForward(blas_, final_norm_.data(),
                                          base_.matrix(layout_.lm_head()), logits_.data(), count,
                                          decoded_.data()));
  if (!status.ok()) return status;
  return cuda::CopyDeviceToHost(logits.data(), logits_.data(),
                                static_cast<size_t>(count * s.vocab) * sizeof(float));
}

}  // namespace internal

namespace {

using internal::CudaAdapterBackend;
using internal::DeviceArray;

// One sequence's keys and values on the device: per layer, [capacity, kv_width] each. The
// capacity doubles as the sequence grows, so a sequence of n tokens copies O(n) rows in all.
class DeviceKvStore final : public KvStore {
 public:
  DeviceKvStore(int64_t layers, int64_t kv_width, int64_t max_length)
      : kv_width_(kv_width),
        max_length_(max_length),
        keys_(static_cast<size_t>(layers)),
        values_(static_cast<size_t>(layers)) {}

  // Makes room for `length` positions, keeping the first `kept`.
  absl::Status Reserve(int64_t length, int64_t kept) {
    if (length <= capacity_) return absl::OkStatus();
    const int64_t capacity = std::min(std::max({length, 2 * capacity_, int64_t{16}}), max_length_);
    return Resize(capacity, kept);
  }

  absl::StatusOr<std::unique_ptr<KvStore>> CopyPrefix(int64_t length) const override {
    auto copy =
        std::make_unique<DeviceKvStore>(static_cast<int64_t>(keys_.size()), kv_width_, max_length_);
    if (length == 0) return copy;
    if (absl::Status status = copy->Resize(length, 0); !status.ok()) return status;
    const auto bytes = static_cast<size_t>(length * kv_width_) * sizeof(float);
    for (size_t layer = 0; layer < keys_.size(); ++layer) {
      absl::Status status =
          kernels::cuda::CopyDeviceToDevice(copy->keys_[layer].data(), keys_[layer].data(), bytes);
      status.Update(kernels::cuda::CopyDeviceToDevice(copy->values_[layer].data(),
                                                      values_[layer].data(), bytes));
      if (!status.ok()) return status;
    }
    return copy;
  }

  // The capacity stays: giving device memory back means copying what is kept, and a
  // truncated sequence is about to grow again.
  void Truncate(int64_t) override {}

  float* keys(int64_t layer) { return keys_[static_cast<size_t>(layer)].data(); }
  float* values(int64_t layer) { return values_[static_cast<size_t>(layer)].data(); }

 private:
  absl::Status Resize(int64_t capacity, int64_t kept) {
    const auto kept_bytes = static_cast<size_t>(kept * kv_width_) * sizeof(float);
    for (size_t layer = 0; layer < keys_.size(); ++layer) {
      for (std::vector<DeviceArray<float>>* side : {&keys_, &values_}) {
        absl::StatusOr<DeviceArray<float>> grown =
            DeviceArray<float>::Allocate(static_cast<size_t>(capacity * kv_width_));
        if (!grown.ok()) return grown.status();
        DeviceArray<float>& held = (*side)[layer];
        if (kept_bytes > 0) {
          if (absl::Status status =
                  kernels::cuda::CopyDeviceToDevice(grown->data(), held.data(), kept_bytes);
              !status.ok()) {
            return status;
          }
        }
        held = *std::move(grown);
      }
    }
    capacity_ = capacity;
    return absl::OkStatus();
  }

  int64_t kv_width_;
  int64_t max_length_;
  int64_t capacity_ = 0;
  std::vector<DeviceArray<float>> keys_, values_;
};

class CudaDecoder final : public Decoder {
 public:
  CudaDecoder(const MoeConfig& config, std::unique_ptr<CudaAdapterBackend> backend)
      : Decoder(config), backend_(std::move(backend)) {}

  KvCache NewCache() const override {
    return KvCache(std::make_unique<DeviceKvStore>(config().num_hidden_layers,
                                                   config().key_value_width(), max_length()),
                   config().num_hidden_layers, config().key_value_width());
  }

  std::string_view device() const override { return "cuda"; }

 private:
  bool Owns(const KvStore& store) const override {
    return dynamic_cast<const DeviceKvStore*>(&store) != nullptr;
  }

  absl::StatusOr<std::span<const float>> Run(std::span<const DecodeSegment> segments) override {
    std::vector<CudaAdapterBackend::DecodeSequence> sequences(segments.size());
    for (size_t s = 0; s < segments.size(); ++s) {
      const DecodeSegment& segment = segments[s];
      auto& store = static_cast<DeviceKvStore&>(segment.cache->store());
      const int64_t first = segment.cache->length();
      if (absl::Status status =
              store.Reserve(first + static_cast<int64_t>(segment.tokens.size()), first);
          !status.ok()) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "the GPU has no room for a sequence's keys and values: ", status.message()));
      }
      CudaAdapterBackend::DecodeSequence& sequence = sequences[s];
      sequence.tokens = segment.tokens;
      sequence.first = first;
      for (int64_t layer = 0; layer < config().num_hidden_layers; ++layer) {
        sequence.keys.push_back(store.keys(layer));
        sequence.values.push_back(store.values(layer));
      }
    }
    logits_.resize(segments.size() * static_cast<size_t>(vocab_size()));
    if (absl::Status status = backend_->Decode(sequences, logits_); !status.ok()) return status;
    return std::span<const float>(logits_);
  }

  std::unique_ptr<CudaAdapterBackend> backend_;
  std::vector<float> logits_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> CreateCudaDecoder(const FrozenBase& base,
                                                           const LoraAdapters& adapters) {
  if (absl::Status status = CheckAdaptersFit(base.config(), adapters); !status.ok()) {
    return status;
  }
  if (absl::Status status = CheckCudaTakesModel(base.config()); !status.ok()) return status;
  if (absl::Status status = kernels::cuda::SetDevice(0); !status.ok()) return status;
  absl::StatusOr<kernels::cuda::Blas> blas =
      kernels::cuda::Blas::Create(kernels::cuda::GroupedProducts::kGroupedCall);
  if (!blas.ok()) return blas.status();
  absl::StatusOr<internal::DeviceBase> device_base = internal::DeviceBase::Upload(base);
  if (!device_base.ok()) return device_base.status();
  auto backend = std::make_unique<CudaAdapterBackend>(*std::move(device_base), adapters,
                                                      BackendOptions(), 0, *std::move(blas));
  if (absl::Status status = backend->Initialize(); !status.ok()) return status;
  return std::unique_ptr<Decoder>(std::make_unique<CudaDecoder>(base.config(), std::move(backend)));
}

}  // namespace fedmoe::model
