#!/usr/bin/env bash
# Fuzzes every parser and handler that takes outside bytes (tests/fuzz/*_fuzz.cc) with
# libFuzzer, in a clang build with ASan and UBSan of its own (build-fuzz/).
#
#   tests/fuzz.sh [SECONDS] [TARGET...]   each target for SECONDS (default 60); all by default
#
# Each target starts from its seeds in tests/fuzz/corpus/TARGET, which it reads and never
# writes; the inputs it finds go to build-fuzz/corpus/TARGET. A crash, leak, sanitizer report,
# broken property or input slower than 25 s leaves its input in build-fuzz/crashes/TARGET/ and
# fails the script; replay it with `build/bin/fuzz_TARGET FILE` (the same entry point, built
# with gcc) or `build-fuzz/bin/fuzz_TARGET FILE`. Prints one JSON line per target.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=60
if (($#)) && [[ "$1" =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
case "${1:-}" in
  -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) echo "tests/fuzz.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
esac

all_targets=()
for source in "$root"/tests/fuzz/*_fuzz.cc; do
  name=$(basename "$source" _fuzz.cc)
  all_targets+=("$name")
done
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")
for target in "${targets[@]}"; do
  if [[ ! -f "$root/tests/fuzz/${target}_fuzz.cc" ]]; then
    echo "tests/fuzz.sh: no target '$target' (there are: ${all_targets[*]})" >&2
    exit 2
  fi
done

"$root/deploy/install-deps.sh" >&2
build=$root/build-fuzz
# Without -Werror: gcc's build in build/ is the warnings gate. clang's instrumented code warns
# about things that are not the source's (a loop the instrumentation keeps from vectorising).
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DFEDMOE_FUZZ=ON \
  -DFEDMOE_CUDA=OFF -DFEDMOE_SANITIZE= -DFEDMOE_WERROR=OFF >&2
cmake --build "$build" -j"${FEDMOE_JOBS:-2}" --target "${targets[@]/#/fuzz_}" >&2

failed=0
for target in "${targets[@]}"; do
  corpus=$build/corpus/$target
  crashes=$build/crashes/$target
  log=$build/logs/$target.log
  mkdir -p "$corpus" "$crashes" "$(dirname "$log")"
  status=0
  # One process, one input at a time: -rss_limit_mb bounds what an input may make the target
  # allocate, and -timeout how long one input may take.
  "$build/bin/fuzz_$target" -max_total_time="$seconds" -timeout=25 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" "$root/tests/fuzz/corpus/$target" \
    >"$log" 2>&1 || status=$?
  final_stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  runs=$(final_stat number_of_executed_units)
  rate=$(final_stat average_exec_per_sec)
  found=$(find "$crashes" -type f | wc -l)
  printf '{"target": "%s", "seconds": %s, "runs": %s, "execs_per_second": %s, "corpus": %s, "crashes": %s, "exit": %s}\n' \
    "$target" "$seconds" "${runs:-0}" "${rate:-0}" "$(find "$corpus" -type f | wc -l)" "$found" "$status"
  if ((status != 0 || found > 0)); then
    failed=1
    echo "tests/fuzz.sh: $target failed (exit $status); its log, $log, ends:" >&2
    tail -40 "$log" >&2
  fi
done
exit "$failed"
