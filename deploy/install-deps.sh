#!/usr/bin/env bash
# Installs the Debian 12 packages that fedmoe builds, tests and runs with.
#
# Idempotent: a package already installed is left alone, and nothing is done (not even an
# apt index refresh) when everything is present. Runs as root, or through sudo otherwise.
# Prints the packages it installs.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git ca-certificates python3
  # tests of the Helm chart: Go's text/template (Helm's engine) renders it, and the rendered
  # YAML is parsed
  python3-yaml golang-go
  # wire contract and services
  protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev
  # crypto, numerics, foundations
  libssl-dev openssl libeigen3-dev libabsl-dev
  # oneDNN: bf16 matrix products (AMX) for mixed-precision training on the CPU
  libdnnl-dev
  # model: checkpoint headers, config.json and tokenizer.json; the BPE pre-tokenizer regex
  nlohmann-json3-dev libpcre2-dev
  # state and configuration
  libsqlite3-dev sqlite3 libyaml-cpp-dev
  # the Prometheus /metrics and /health endpoint of both programs
  prometheus-cpp-dev libcivetweb-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # style and analysis
  clang-format clang-tidy
  # fuzzing (tests/fuzz.sh): clang with libFuzzer and the sanitizer runtimes, and clang's OpenMP
  clang libclang-rt-dev libomp-dev
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

if ((EUID == 0)); then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
