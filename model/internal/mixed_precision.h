// The weight products of a pass in the precision it chose (MatMulPrecision), forward and
// backward: the attention projections through Linear*, and each expert's SwiGLU MLP, routed and
// shared alike, through ExpertMlp*. In bf16 every operand comes rounded (the caller keeps the
// rounded copies the backward pass reads again); fp32 takes the fp32 kernels. Internal to
// model/.
#ifndef FEDMOE_MODEL_INTERNAL_MIXED_PRECISION_H_
#define FEDMOE_MODEL_INTERNAL_MIXED_PRECISION_H_

#include <cstdint>

#include "kernels/cpu/bf16.h"
#include "model/matmul_precision.h"

namespace fedmoe::model::internal {

using kernels::cpu::AlignedBf16;
using kernels::cpu::Bf16;

// A matrix operand in both precisions: `fp32` for fp32 products, `bf16` (rounded) for bf16
// ones; the other may be null.
struct Operand {
  const float* fp32;
  const Bf16* bf16;

  // The operand from its n-th value on (a block of rows); null stays null.
  Operand From(int64_t n) const {
    return {fp32 == nullptr ? nullptr : fp32 + n, bf16 == nullptr ? nullptr : bf16 + n};
  }
};

// `values` (n of them) as an operand of `precision`: for bf16 also rounded, into `rounded`, or
// into `storage` sized to n.
Operand AsOperand(MatMulPrecision precision, const float* values, int64_t n, Bf16* rounded);
Operand AsOperand(MatMulPrecision precision, const float* values, int64_t n, AlignedBf16& storage);

// Where each attention projection's rounded copy sits in
// LayerActivations::attention_weights_bf16: q_proj, k_proj, v_proj, o_proj, one after another.
struct AttentionWeightsBf16 {
  int64_t q, k, v, o, total;
};
AttentionWeightsBf16 AttentionWeightsBf16Layout(int64_t hidden, int64_t q_width, int64_t kv_width);

// out [rows, out_features] = in·weightᵀ.
void LinearForward(MatMulPrecision precision, Operand in, Operand weight, float* out, int64_t rows,
                   int64_t in_features, int64_t out_features);
// d_in += d_out·weight, d_weight += d_outᵀ·in; a null one is skipped.
void LinearBackward(MatMulPrecision precision, Operand in, Operand weight, Operand d_out,
                    float* d_in, float* d_weight, int64_t rows, int64_t in_features,
                    int64_t out_features);

// An expert's fp32 master weights: w1, w3 [inner, hidden], w2 [hidden, inner].
struct ExpertMlpWeights {
  const float* w1;
  const float* w3;
  const float* w2;
};

// One expert's activations over its rows, as the forward pass writes them (Float = float) and
// the backward pass reads them (Float = const float). act is kept in the precision of the
// products, `act` for fp32, `act_bf16` for bf16 (the other null); gate and up are fp32 either
// way.
template <typename Float, typename Half>
struct ExpertMlpActivationsOf {
  Operand in;
  Float* gate;
  Float* up;
  Float* act;
  Half* act_bf16;
};
using ExpertMlpOutputs = ExpertMlpActivationsOf<float, Bf16>;
using ExpertMlpSaved = ExpertMlpActivationsOf<const float, const Bf16>;

// out [rows, hidden] = the MLP of the activations' input. For bf16, `weights_bf16`
// ([3, inner·hidden]: w1, w3, w2) receives the rounded weights, which the backward pass reads.
void ExpertMlpForward(MatMulPrecision precision, const ExpertMlpWeights& weights,
                      Bf16* weights_bf16, const ExpertMlpOutputs& activations, float* out,
                      int64_t rows, int64_t hidden, int64_t inner);

// Gradients to add into (null: not wanted) and scratch, [rows, inner] each: d_act, and d_gate
// and d_up in fp32 for fp32 products, in bf16 for bf16 ones.
struct ExpertMlpGradients {
  float* d_in;
  float* d_w1;
  float* d_w3;
  float* d_w2;
  float* d_act;
  float* d_gate;
  float* d_up;
  Bf16* d_gate_bf16;
  Bf16* d_up_bf16;
};

void ExpertMlpBackward(MatMulPrecision precision, const ExpertMlpWeights& weights,
                       const Bf16* weights_bf16, const ExpertMlpSaved& activations, Operand d_out,
                       const ExpertMlpGradients& gradients, int64_t rows, int64_t hidden,
                       int64_t inner);

}  // namespace fedmoe::model::internal

#endif  // FEDMOE_MODEL_INTERNAL_MIXED_PRECISION_H_
