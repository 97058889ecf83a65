#!/usr/bin/env bash
# The CUDA kernels' tests on a real GPU: one prepared run for a machine that has one (issue #9's
# device check). Configures build-gpu/ with CUDA required and compiled for the local GPU only,
# builds cuda_kernels_test alone, and runs it. Writes the log and the GPU's description to
# $OUT (or ./gpu-check) and exits with the tests' status.
#
#   tests/gpu_check.sh [gtest filter]
#
# The machine needs fedmoe's Debian packages already installed (deploy/install-deps.sh), since
# a device machine may have no network to install them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/gpu-check}
mkdir -p "$out"
filter=${1:-*}
{
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv || true
  # The local GPU's architecture (9.0 on an H200), so nvcc compiles one target, not two.
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
  cmake -S "$root" -B "$root/build-gpu" -DCMAKE_BUILD_TYPE=Release -DFEDMOE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${arch:-90}" -DFEDMOE_SANITIZE= -DFEDMOE_WERROR=ON
  cmake --build "$root/build-gpu" -j"$(nproc)" --target cuda_kernels_test
  "$root/build-gpu/bin/cuda_kernels_test" --gtest_filter="$filter" --gtest_brief=0
} 2>&1 | tee "$out/gpu_check.log"
