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
  # tests and benchmarks; Boost.Context switches the CUDA simulator's threads
  libgtest-dev libgmock-dev libbenchmark-dev libboost-context-dev
  # style and analysis
  clang-format clang-tidy
  # fuzzing (tests/fuzz.sh): clang with libFuzzer and the sanitizer runtimes, and clang's OpenMP
  clang libclang-rt-dev libomp-dev
)

# Wanted but not needed: a test renders `model explain`'s page in Debian's headless Chromium, and
# skips, saying so, where Chromium cannot be installed. A failure to install these is a warning.
optional_packages=(chromium)

not_installed() {
  local package status
  for package in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || echo "$package"
  done
}
mapfile -t missing < <(not_installed "${packages[@]}")
mapfile -t missing_optional < <(not_installed "${optional_packages[@]}")

if ((${#missing[@]} == 0 && ${#missing_optional[@]} == 0)); then
  echo "install-deps: all $((${#packages[@]} + ${#optional_packages[@]})) packages present"
  exit 0
fi

if ((EUID == 0)); then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
elif ((${#missing[@]} == 0)); then
  echo "install-deps: warning: no root or sudo to install ${missing_optional[*]}; the browser" \
    "test of model explain's page will skip" >&2
  exit 0
else
  echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ((${#missing_optional[@]})); then
  echo "install-deps: installing ${missing_optional[*]}"
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing_optional[@]}" ||
    echo "install-deps: warning: could not install ${missing_optional[*]}; the browser test of" \
      "model explain's page will skip" >&2
fi
echo "install-deps: done"
