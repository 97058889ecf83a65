// Token embeddings: the twins of cuda::EmbeddingForward and cuda::EmbeddingBackward.
#ifndef FEDMOE_KERNELS_CPU_EMBEDDING_H_
#define FEDMOE_KERNELS_CPU_EMBEDDING_H_

#include <cstdint>

namespace fedmoe::kernels::cpu {

// out[row] = table[tokens[row]] for [rows, width].
void EmbeddingForward(const int32_t* tokens, const float* table, float* out, int64_t rows,
                      int64_t width);

// d_table[tokens[row]] += d_out[row]. Rows that share a token add into one row of d_table, so
// the rows run in order on one thread: the same bits every run (the GPU's atomics do not
// promise that).
void EmbeddingBackward(const int32_t* tokens, const float* d_out, float* d_table, int64_t rows,
                       int64_t width);

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_EMBEDDING_H_
