#include "kernels/cpu/threads.h"

#include <malloc.h>
#include <omp.h>

#include <Eigen/Core>

namespace fedmoe::kernels::cpu {

void SetCpuThreads(int threads) {
  const int resolved = threads >= 1 ? threads : omp_get_num_procs();
  omp_set_num_threads(resolved);
  Eigen::setNbThreads(resolved);
}

int CpuThreads() { return omp_get_max_threads(); }

void RetainFreedMemory() {
  constexpr int kLargeBlock = 1 << 30;
  mallopt(M_MMAP_THRESHOLD, kLargeBlock);
  mallopt(M_TRIM_THRESHOLD, kLargeBlock);
}

}  // namespace fedmoe::kernels::cpu
