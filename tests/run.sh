#!/usr/bin/env bash
# Builds fedmoe and runs every test. The exit status is the tests' result.
#
#   tests/run.sh              Release build with -Werror in build/, then ctest (which replays
#                             every fuzz target's seeds, built with gcc)
#   tests/run.sh --fuzz       the same, then each libFuzzer target for a few seconds in a clang
#                             tree of its own with ASan and UBSan (tests/fuzz.sh)
#   tests/run.sh --sanitize   the same as the first with ASan and UBSan, in build-asan/
#   tests/run.sh --lint       clang-format over the tree, then clang-tidy over the sources
#
# Installs missing Debian packages first (deploy/install-deps.sh). Extra arguments after `--`
# go to ctest, e.g. `tests/run.sh -- -R Secagg` or `tests/run.sh -- -LE slow`.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=release
fuzz=0
ctest_args=()
while (($#)); do
  case "$1" in
    --sanitize) mode=sanitize ;;
    --fuzz) fuzz=1 ;;
    --lint) mode=lint ;;
    --) shift; ctest_args=("$@"); break ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tests/run.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

jobs=${FEDMOE_JOBS:-2}
"$root/deploy/install-deps.sh"

configure_and_build() {
  local build_dir=$1; shift
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DFEDMOE_WERROR=ON "$@"
  cmake --build "$build_dir" -j"$jobs"
}

case "$mode" in
  release)
    configure_and_build "$root/build" -DFEDMOE_SANITIZE= -DFEDMOE_PCH=ON
    build_dir=$root/build
    ;;
  sanitize)
    configure_and_build "$root/build-asan" -DFEDMOE_SANITIZE=address,undefined
    build_dir=$root/build-asan
    # CUDA's runtime maps device memory where ASan keeps its shadow gap.
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:protect_shadow_gap=0:abort_on_error=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    ;;
  lint)
    "$root/tests/lint/check_format.sh" "$root"
    # clang-tidy reads the compile commands of a configured tree; generated headers must exist.
    # Without precompiled headers: GCC's are no use to clang, and every source then names its
    # own includes.
    configure_and_build "$root/build" -DFEDMOE_SANITIZE= -DFEDMOE_PCH=OFF
    exec "$root/tests/lint/check_tidy.sh" "$root" "$root/build"
    ;;
esac

# Tests run side by side, each with OpenMP threads for every core. Threads that spin at their
# barriers (GOMP's default) then steal the cores the other test needs: the unit tests took
# 67 s with spinning and 16 s with waiting threads asleep.
status=0
OMP_WAIT_POLICY=PASSIVE \
  ctest --test-dir "$build_dir" --output-on-failure -j"$jobs" --timeout 900 "${ctest_args[@]}" ||
  status=$?

# The libFuzzer targets, a few seconds each, so that they keep building with clang and their
# seeds keep passing under the sanitizers. Not in the default run: a second, clang, tree of every
# library takes about 10 minutes on 2 cores, which CI's budget for this script cannot hold, and
# ctest already replays each target's seeds. `tests/fuzz.sh 600` is the real run.
if ((fuzz)); then
  "$root/tests/fuzz.sh" "${FEDMOE_FUZZ_SECONDS:-5}" || status=1
fi
exit "$status"
