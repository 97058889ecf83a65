#!/usr/bin/env bash
# Issue #9's device run, on a machine with a GPU: the CUDA kernels' and the training backend's
# tests, bench/attention (the attention kernels, fp32 beside TF32), then bench/train_step
# --device cuda for small and medium (medium also with four micro-batches a step, the
# memory-bound optimizer amortised, with the expert products on concurrent streams instead of
# one grouped call, and last with fp32 attention, for the step's difference). tests/gpu_check.sh calls it after
# building there; tests/gpu_bundle.sh packs it as gpu-bundle/run.sh beside prebuilt binaries and
# a lib.tar.xz of the libraries a CUDA-only machine lacks, which it unpacks. CUDA's own libraries
# come from the toolkit, else from the wheels PyTorch brings. Then bench/privacy_encode where the
# bundle has it (#7's encoding against masking on the host's cores), and bench/serve --device
# cuda for small (#30's generation on the GPU: cuda_adapter_test holds its decoder to the CPU's
# first). Writes gpu_check.log, serve.jsonl,
# gpu.csv, train_step.jsonl and privacy_encode.jsonl to $OUT (or ./gpu-check) and exits
# non-zero if a test or a bench failed. attention.jsonl too. Everything is also in
# gpu_check.log as it happens, so a run cut short keeps what it measured. Each train_step line
# ends with one more step's kernel profile (kernels/cuda/profile.h), summarised in the log.
#
#   tests/gpu_run.sh BIN_DIR [gtest filter] [bench steps]
#   gpu-bundle/run.sh [gtest filter] [bench steps]      (BIN_DIR: the bundle's bin/)
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f $here/lib.tar.xz ]]; then
  bin="$here/bin"
else
  bin=${1:?usage: tests/gpu_run.sh BIN_DIR [gtest filter] [bench steps]}
  shift
fi
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

library_dirs=()
if [[ -f $here/lib.tar.xz ]]; then
  mkdir -p /tmp/fedmoe-gpu-bundle-lib
  tar -C /tmp/fedmoe-gpu-bundle-lib -xJf "$here/lib.tar.xz" --strip-components=1
  library_dirs+=(/tmp/fedmoe-gpu-bundle-lib)
fi
for dir in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [[ -d $dir ]] && library_dirs+=("$dir")
done
while read -r dir; do library_dirs+=("$dir"); done < <(
  python3 -c 'import glob, os, site
for base in site.getsitepackages():
    for d in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib"))): print(d)' 2>/dev/null)
export LD_LIBRARY_PATH="$(IFS=:; echo "${library_dirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >>"$log"

nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv |
  tee "$out/gpu.csv" | tee -a "$log"
for binary in cuda_kernels_test cuda_training_test cuda_adapter_test attention train_step \
  fedmoe-client serve; do
  [[ -x $bin/$binary ]] || continue
  if ldd "$bin/$binary" | grep -q 'not found'; then
    ldd "$bin/$binary" | grep 'not found' | tee -a "$log"
    status=1
  fi
done
run "$bin/cuda_kernels_test" --gtest_filter="$filter" --gtest_brief=0
run "$bin/cuda_training_test" --gtest_filter="$filter" --gtest_brief=0
run "$bin/cuda_adapter_test" --gtest_filter="$filter" --gtest_brief=0
run "$bin/attention" --config all --iterations 20
grep '^{.*"benchmark":"attention"' "$log" >"$out/attention.jsonl"
for config in small medium; do
  run "$bin/train_step" --device cuda --config "$config" --steps "$steps"
done
run "$bin/train_step" --device cuda --config medium --steps "$steps" --accumulation 4
run "$bin/train_step" --device cuda --config medium --steps "$steps" --expert-products streams
run "$bin/train_step" --device cuda --config medium --steps "$steps" --attention fp32
grep '^{.*"benchmark":"train_step"' "$log" >"$out/train_step.jsonl"
# Each line's profiled step, readable: where the GPU's time went, longest first.
python3 - "$out/train_step.jsonl" <<'SUMMARY' 2>&1 | tee -a "$log"
import json, sys
for text in open(sys.argv[1]):
    line = json.loads(text)
    profile = line.get("kernel_profile") or {}
    if "kernels" not in profile:
        continue
    print(f'{line["config"]}, {line["gradient_accumulation"]} micro-batch(es), attention '
          f'{line["attention"]}, expert products {line.get("expert_products")}: step '
          f'{profile["step_seconds"] * 1e3:.1f} ms, GPU busy {profile["gpu_seconds"] * 1e3:.1f} ms')
    for kernel in profile["kernels"][:20]:
        print(f'  {kernel["seconds"] * 1e3:9.2f} ms {kernel["calls"]:6d}  {kernel["name"]}')
SUMMARY
# #30: decoding on the GPU over real HTTP, beside the same server on the host's cores.
if [[ -x $bin/serve && -x $bin/fedmoe-client ]]; then
  run "$bin/serve" --device cuda --config small
  run "$bin/serve" --device cpu --config small
  grep '^{.*"benchmark":"serve' "$log" >"$out/serve.jsonl"
fi
# #7's ratio on this host's cores: the encoding uses them all, the masking one.
if [[ -x $bin/privacy_encode ]]; then
  nproc | tee -a "$log"
  run "$bin/privacy_encode" --benchmark_filter='BM_Encode/0|BM_EncodeAsPlanned|BM_SecAggMasking'
  grep '^{.*"benchmark":"BM_' "$log" >"$out/privacy_encode.jsonl"
fi
exit "$status"
