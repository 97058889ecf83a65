#include "model/compute.h"

#include "kernels/cpu/threads.h"

namespace fedmoe::model {

void SetCpuThreads(int threads) { kernels::cpu::SetCpuThreads(threads); }

int CpuThreads() { return kernels::cpu::CpuThreads(); }

void RetainFreedMemory() { kernels::cpu::RetainFreedMemory(); }

}  // namespace fedmoe::model
