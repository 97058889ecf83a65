#include "model/internal/expert_mlp.h"

#include "kernels/cpu/dense.h"

namespace fedmoe::model::internal {

namespace cpu = kernels::cpu;

void ExpertMlpForward(ExpertPrecision precision, const ExpertMlpWeights& weights,
                      Bf16* weights_bf16, const ExpertMlpOutputs& activations, float* out,
                      int64_t rows, int64_t hidden, int64_t inner) {
  if (precision == ExpertPrecision::kFloat32) {
    cpu::SwiGluMlpForward(activations.in, weights.w1, weights.w3, weights.w2, activations.gate,
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
  cpu::SwiGluMlpForwardBf16(activations.in_bf16, w1, w3, w2, activations.gate, activations.up,
                            activations.act_bf16, out, rows, hidden, inner);
}

void ExpertMlpBackward(ExpertPrecision precision, const ExpertMlpWeights& weights,
                       const Bf16* weights_bf16, const ExpertMlpSaved& activations,
                       const ExpertMlpOutputGradient& output, const ExpertMlpGradients& gradients,
                       int64_t rows, int64_t hidden, int64_t inner) {
  if (precision == ExpertPrecision::kFloat32) {
    cpu::SwiGluMlpBackward(activations.in, weights.w1, weights.w3, weights.w2, activations.gate,
                           activations.up, activations.act, output.d_out, gradients.d_in,
                           gradients.d_w1, gradients.d_w3, gradients.d_w2, gradients.d_gate,
                           gradients.d_up, gradients.d_act, rows, hidden, inner);
    return;
  }
  const int64_t size = inner * hidden;
  cpu::SwiGluMlpBackwardBf16(
      activations.in_bf16, weights_bf16, weights_bf16 + size, weights_bf16 + 2 * size,
      activations.gate, activations.up, activations.act_bf16, output.d_out_bf16, gradients.d_in,
      gradients.d_w1, gradients.d_w3, gradients.d_w2, gradients.d_act, gradients.d_gate,
      gradients.d_up, gradients.d_gate_bf16, gradients.d_up_bf16, rows, hidden, inner);
}

}  // namespace fedmoe::model::internal
