// One expert's SwiGLU MLP in the precision the pass chose, forward and backward: the routed
// experts and the shared ones take this one path. Internal to model/.
#ifndef FEDMOE_MODEL_INTERNAL_EXPERT_MLP_H_
#define FEDMOE_MODEL_INTERNAL_EXPERT_MLP_H_

#include <cstdint>

#include "kernels/cpu/bf16.h"
#include "model/forward.h"

namespace fedmoe::model::internal {

using kernels::cpu::Bf16;

// An expert's fp32 master weights: w1, w3 [inner, hidden], w2 [hidden, inner].
struct ExpertMlpWeights {
  const float* w1;
  const float* w3;
  const float* w2;
};

// One expert's activations over its rows, as the forward pass writes them (Float = float) and
// the backward pass reads them (Float = const float). The input and act are kept in the
// precision of the products, `in` and `act` for fp32, `in_bf16` and `act_bf16` for bf16 (the
// others null); gate and up are fp32 either way.
template <typename Float, typename Half>
struct ExpertMlpActivationsOf {
  const float* in;
  const Bf16* in_bf16;
  Float* gate;
  Float* up;
  Float* act;
  Half* act_bf16;
};
using ExpertMlpOutputs = ExpertMlpActivationsOf<float, Bf16>;
using ExpertMlpSaved = ExpertMlpActivationsOf<const float, const Bf16>;

// out [rows, hidden] = the MLP of the activations' input. For bf16, `weights_bf16`
// ([3, inner·hidden]: w1, w3, w2) receives the rounded weights, which the backward pass reads.
void ExpertMlpForward(ExpertPrecision precision, const ExpertMlpWeights& weights,
                      Bf16* weights_bf16, const ExpertMlpOutputs& activations, float* out,
                      int64_t rows, int64_t hidden, int64_t inner);

// The gradient of the MLP's output in fp32, and for bf16 also rounded.
struct ExpertMlpOutputGradient {
  const float* d_out;
  const Bf16* d_out_bf16;
};

// Gradients to add into (null: not wanted) and scratch ([rows, inner] each; the bf16 pair only
// for bf16).
struct ExpertMlpGradients {
  float* d_in;
  float* d_w1;
  float* d_w3;
  float* d_w2;
  float* d_gate;
  float* d_up;
  float* d_act;
  Bf16* d_gate_bf16;
  Bf16* d_up_bf16;
};

void ExpertMlpBackward(ExpertPrecision precision, const ExpertMlpWeights& weights,
                       const Bf16* weights_bf16, const ExpertMlpSaved& activations,
                       const ExpertMlpOutputGradient& output, const ExpertMlpGradients& gradients,
                       int64_t rows, int64_t hidden, int64_t inner);

}  // namespace fedmoe::model::internal

#endif  // FEDMOE_MODEL_INTERNAL_EXPERT_MLP_H_
