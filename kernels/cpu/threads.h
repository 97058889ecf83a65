// How many CPU threads the kernels use. One setting covers both kinds of parallelism in
// kernels/cpu: Eigen's own GEMM threads and the OpenMP loops over rows, heads and experts.
#ifndef FEDMOE_KERNELS_CPU_THREADS_H_
#define FEDMOE_KERNELS_CPU_THREADS_H_

namespace fedmoe::kernels::cpu {

// The default is every core the process may run on. A value below 1 restores that default.
// One thread makes every kernel's floating-point summation order fixed, which is what a
// bit-reproducible run needs.
void SetCpuThreads(int threads);
int CpuThreads();

// Keeps freed large blocks in the process for reuse instead of returning them to the OS.
// Eigen allocates its GEMM packing buffers per product, and glibc serves blocks of that size
// with fresh mmaps by default, so every product paid for page faults and zeroing (a tenth of a
// training step). Process-wide; programs that run the kernels call it once at start.
void RetainFreedMemory();

}  // namespace fedmoe::kernels::cpu

#endif  // FEDMOE_KERNELS_CPU_THREADS_H_
