#!/usr/bin/env bash
# The device side of tests/gpu_bundle.sh (copied into gpu-bundle/ as run.sh): unpacks the
# carried libraries, finds CUDA's (the toolkit's, else the pip wheels' that PyTorch brings),
# runs the CUDA kernels' and the training backend's tests, then the GPU bench for small and
# medium. Writes gpu_check.log, gpu.csv and train_step.jsonl to $OUT (or ./gpu-check) and
# exits non-zero if a test or the bench failed.
#
#   gpu-bundle/run.sh [gtest filter] [bench steps]
set -uo pipefail
bundle=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:-$PWD/gpu-check}
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
}

libraries=/tmp/fedmoe-gpu-bundle-lib
mkdir -p "$libraries"
tar -C "$libraries" -xJf "$bundle/lib.tar.xz" --strip-components=1
cuda_dirs=()
for dir in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d $dir ]] && cuda_dirs+=("$dir")
done
# PyTorch's wheels bring cuBLAS and NCCL where the toolkit lacks them.
while read -r dir; do cuda_dirs+=("$dir"); done < <(
  python3 -c 'import glob, os, site
for base in site.getsitepackages():
    for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib"))): print(d)' 2>/dev/null)
export LD_LIBRARY_PATH="$libraries:$(IFS=:; echo "${cuda_dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >>"$log"

nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv |
  tee "$out/gpu.csv" | tee -a "$log"
for binary in "$bundle"/bin/*; do
  if ldd "$binary" | grep -q 'not found'; then
    ldd "$binary" | grep 'not found' | tee -a "$log"
    status=1
  fi
done
run "$bundle/bin/cuda_kernels_test" --gtest_filter="$filter" --gtest_brief=0
run "$bundle/bin/cuda_training_test" --gtest_filter="$filter" --gtest_brief=0
for config in small medium; do
  run "$bundle/bin/train_step" --device cuda --config "$config" --steps "$steps"
done
# medium again with four micro-batches a step: the memory-bound optimizer (about 33 ms) amortised.
run "$bundle/bin/train_step" --device cuda --config medium --steps "$steps" --accumulation 4
grep '^{.*"benchmark":"train_step"' "$log" >"$out/train_step.jsonl"
exit "$status"
