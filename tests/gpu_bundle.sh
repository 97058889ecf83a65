#!/usr/bin/env bash
# Issue #9's device check for a GPU machine that cannot build fedmoe: the device machines lent
# here carry CUDA, CMake and PyTorch but none of fedmoe's Debian packages, and reach no
# network. So the check is built here and travels: this script builds the CUDA tests and the
# bench for Hopper (sm_90) and a generic x86-64 CPU (not -march=native: the GPU host's CPU may
# lack this one's instructions), and writes gpu-bundle/ with the binaries, the shared
# libraries they need that a CUDA image does not have (abseil, oneDNN, ...), and run.sh, which
# runs the kernels' and the training tests, bench/attention, then bench/train_step --device
# cuda for small and medium, into $OUT; and bench/privacy_encode, #7's encoding against
# masking, on the device host's many cores. The CPU baseline is x86-64-v3 (AVX2, FMA), which any GPU server has.
#
#   tests/gpu_bundle.sh                 build and pack (gpu-bundle/, about 20 MB compressed)
#   gpu-bundle/run.sh [gtest filter]    on the GPU machine, from the repository root
#
# With the device tool: run(command="gpu-bundle/run.sh", carry=["gpu-bundle"]).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-gpu-bundle"
bundle="$root/gpu-bundle"
targets=(cuda_kernels_test cuda_training_test cuda_adapter_test attention train_step privacy_encode
  fedmoe-client serve)

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DFEDMOE_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DFEDMOE_NATIVE=OFF -DFEDMOE_MARCH=x86-64-v3 \
  -DFEDMOE_SANITIZE= >/dev/null
cmake --build "$build" -j"${FEDMOE_JOBS:-2}" --target "${targets[@]}"

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/lib"
for target in "${targets[@]}"; do cp "$build/bin/$target" "$bundle/bin/"; done
# The libraries to carry: what the binaries load, less glibc, the C++ runtime (the device's is
# newer and backward compatible) and CUDA's own (the device's toolkit has them, matched to its
# driver).
ldd "${bundle}"/bin/* | awk '/=> \//{print $3}' | sort -u |
  grep -v -E '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' |
  grep -v -E '/(libcudart|libcublas|libcublasLt|libnccl)\.so' |
  while read -r library; do cp -L "$library" "$bundle/lib/"; done
# oneDNN alone is 40 MB: the libraries travel compressed and unpack on the device.
tar -C "$bundle" -cJf "$bundle/lib.tar.xz" lib
rm -rf "$bundle/lib"
cp "$root/tests/gpu_run.sh" "$bundle/run.sh"
chmod +x "$bundle/run.sh"
du -sh "$bundle"
