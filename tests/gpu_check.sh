#!/usr/bin/env bash
# Issue #9's device check on a machine with a GPU and fedmoe's Debian packages
# (deploy/install-deps.sh): configures build-gpu/ with CUDA required and compiled for the local
# GPU only, builds the CUDA tests and the bench, and runs tests/gpu_run.sh over them. The device
# machines lent to sessions here have CUDA but not those packages and no network: for them,
# tests/gpu_bundle.sh builds the same run here and packs it to travel.
#
#   tests/gpu_check.sh [gtest filter] [bench steps]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The local GPU's architecture (9.0 on an H200), so nvcc compiles one target, not two.
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
cmake -S "$root" -B "$root/build-gpu" -DCMAKE_BUILD_TYPE=Release -DFEDMOE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${arch:-90}" -DFEDMOE_SANITIZE= -DFEDMOE_WERROR=ON
cmake --build "$root/build-gpu" -j"$(nproc)" \
  --target cuda_kernels_test cuda_training_test cuda_adapter_test attention train_step \
  fedmoe-client serve
exec "$root/tests/gpu_run.sh" "$root/build-gpu/bin" "$@"
