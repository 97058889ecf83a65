#!/usr/bin/env bash
# Issue #9's device check, as one prepared run for a machine with a GPU: configures build-gpu/
# with CUDA required and compiled for the local GPU only, builds the CUDA tests and the bench,
# runs the kernels' and the training backend's tests, then bench/train_step --device cuda for
# small and medium. Writes the log, the bench's JSON lines and the GPU's description to $OUT
# (or ./gpu-check) and exits non-zero if a test or the bench failed.
#
#   tests/gpu_check.sh [gtest filter] [bench steps]
#
# The machine needs fedmoe's Debian packages already installed (deploy/install-deps.sh). The
# device machines lent to sessions here have CUDA but not those packages and no network: for
# them, tests/gpu_bundle.sh builds the same run here and packs it to travel.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/gpu-check}
mkdir -p "$out"
filter=${1:-*}
steps=${2:-5}
log="$out/gpu_check.log"
status=0
run() {
  echo "+ $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local code=${PIPESTATUS[0]}
  [[ $code -eq 0 ]] || status=$code
  return "$code"
}
nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv |
  tee "$out/gpu.csv" | tee -a "$log"
# The local GPU's architecture (9.0 on an H200), so nvcc compiles one target, not two.
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
run cmake -S "$root" -B "$root/build-gpu" -DCMAKE_BUILD_TYPE=Release -DFEDMOE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${arch:-90}" -DFEDMOE_SANITIZE= -DFEDMOE_WERROR=ON || exit 1
run cmake --build "$root/build-gpu" -j"$(nproc)" \
  --target cuda_kernels_test cuda_training_test train_step || exit 1
run "$root/build-gpu/bin/cuda_kernels_test" --gtest_filter="$filter" --gtest_brief=0
run "$root/build-gpu/bin/cuda_training_test" --gtest_filter="$filter" --gtest_brief=0
for config in small medium; do
  run "$root/build-gpu/bin/train_step" --device cuda --config "$config" --steps "$steps"
done
# medium again with four micro-batches a step: the memory-bound optimizer (about 33 ms) amortised.
run "$root/build-gpu/bin/train_step" --device cuda --config medium --steps "$steps" --accumulation 4
grep '^{.*"benchmark":"train_step"' "$log" >"$out/train_step.jsonl"
exit "$status"
