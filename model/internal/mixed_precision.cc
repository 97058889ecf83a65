#include "model/internal/mixed_precision.h"

#include "kernels/cpu/dense.h"

namespace fedmoe::model::internal {

namespace cpu = kernels::cpu;

Operand AsOperand(MatMulPrecision precision, const float* values, int64_t n, Bf16* rounded) {
  if (precision == MatMulPrecision::kFloat32) return {values, nullptr};
  cpu::ToBf16(values, rounded, n);
  return {values, rounded};
}

Operand AsOperand(MatMulPrecision precision, const float* values, int64_t n, AlignedBf16& storage) {
  if (precision == MatMulPrecision::kFloat32) return {values, nullptr};
  storage.resize(static_cast<size_t>(n));
  return AsOperand(precision, values, n, storage.data());
}

AttentionWeightsBf16 AttentionWeightsBf16Layout(int64_t hidden, int64_t q_width, int64_t kv_width) {
  const int64_t q = 0;
  const int64_t k = q + q_width * hidden;
  const int64_t v = k + kv_width * hidden;
  const int64_t o = v + kv_width * hidden;
  return {q, k, v, o, o + hidden * q_width};
}

void LinearForward(MatMulPrecision precision, Operand in, Operand weight, float* out, int64_t rows,
                   int64_t in_features, int64_t out_features) {
  if (precision == MatMulPrecision::kFloat32) {
    cpu::LinearForward(in.fp32, weight.fp32, out, rows, in_features, out_features);
  } else {
    cpu::LinearForwardBf16(in.bf16, weight.bf16, out, rows, in_features, out_features);
  }
}

void LinearBackward(MatMulPrecision precision, Operand in, Operand weight, Operand d_out,
                    float* d_in, float* d_weight, int64_t rows, int64_t in_features,
                    int64_t out_features) {
  if (precision == MatMulPrecision::kFloat32) {
    cpu::LinearBackward(in.fp32, weight.fp32, d_out.fp32, d_in, d_weight, rows, in_features,
                        out_features);
  } else {
    cpu::LinearBackwardBf16(in.bf16, weight.bf16, d_out.bf16, d_in, d_weight, rows, in_features,
                            out_features);
  }
}

void ExpertMlpForward(MatMulPrecision precision, const ExpertMlpWeights& weights,
                      Bf16* weights_bf16, const ExpertMlpOutputs& activations, float* out,
                      int64_t rows, int64_t hidden, int64_t inner) {
  if (precision == MatMulPrecision::kFloat32) {
    cpu::SwiGluMlpForward(activations.in.fp32, weights.w1, weights.w3, weights.w2, activations.gate,
                          activations.up, activations.act, out, rows, hidden, inner);
    return;
  }
  // Rounded once per pass and per expert, by the thread that multiplies by them next, while
  // they are in its cache.
  const int64_t size = inner * hidden;
  Bf16* w1 = weights_bf16;
  Bf16* w3 = w1 + size;
  Bf16* w2 = w3 + size;
  cpu::ToBf16(weights.w1, w1, size);
  cpu::ToBf16(weights.w3, w3, size);
  cpu::ToBf16(weights.w2, w2, size);
  cpu::SwiGluMlpForwardBf16(activations.in.bf16, w1, w3, w2, activations.gate, activations.up,
                            activations.act_bf16, out, rows, hidden, inner);
}

void ExpertMlpBackward(MatMulPrecision precision, const ExpertMlpWeights& weights,
                       const Bf16* weights_bf16, const ExpertMlpSaved& activations, Operand d_out,
                       const ExpertMlpGradients& gradients, int64_t rows, int64_t hidden,
                       int64_t inner) {
  if (precision == MatMulPrecision::kFloat32) {
    cpu::SwiGluMlpBackward(activations.in.fp32, weights.w1, weights.w3, weights.w2,
                           activations.gate, activations.up, activations.act, d_out.fp32,
                           gradients.d_in, gradients.d_w1, gradients.d_w3, gradients.d_w2,
                           gradients.d_gate, gradients.d_up, gradients.d_act, rows, hidden, inner);
    return;
  }
  const int64_t size = inner * hidden;
  cpu::SwiGluMlpBackwardBf16(activations.in.bf16, weights_bf16, weights_bf16 + size,
                             weights_bf16 + 2 * size, activations.gate, activations.up,
                             activations.act_bf16, d_out.bf16, gradients.d_in, gradients.d_w1,
                             gradients.d_w3, gradients.d_w2, gradients.d_act, gradients.d_gate_bf16,
                             gradients.d_up_bf16, rows, hidden, inner);
}

}  // namespace fedmoe::model::internal
