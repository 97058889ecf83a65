#!/usr/bin/env bash
# clang-tidy, with the checks of .clang-tidy, over fedmoe's own C++ sources (not generated
# code). The CUDA sources are checked as the simulator build compiles them, as C++, through the
# wrappers it generates (build/kernels/cuda_sim/*.cc, one #include each): clang-tidy's own CUDA
# support would need the CUDA SDK's clang setup.
set -euo pipefail
root=${1:?source dir}
build_dir=${2:?build dir with compile_commands.json}
cd "$root"
mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.cc' |
  while read -r f; do [[ -f "$f" ]] && echo "$f"; done)
for wrapper in "$build_dir"/kernels/cuda_sim/*.cc; do [[ -f $wrapper ]] && files+=("$wrapper"); done
echo "check_tidy: ${#files[@]} files"
# The compile commands are GCC's; clang does not know some of its warning flags
# (-Wno-maybe-uninitialized), which is not a finding.
# clang-tidy counts the diagnostics it suppressed in system headers on stderr; drop that noise.
printf '%s\n' "${files[@]}" |
  xargs -P "${FEDMOE_JOBS:-2}" -n 4 clang-tidy -p "$build_dir" --quiet --warnings-as-errors='*' \
    --extra-arg=-Wno-unknown-warning-option \
    2> >(grep -v -E '^[0-9]+ warnings? generated\.$' >&2)
echo "check_tidy: clean"
