#!/usr/bin/env bash
# clang-format --dry-run -Werror over every C++, CUDA and proto file of the tree. Lists the
# files git knows (tracked and untracked-not-ignored), so build trees are never scanned.
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/../.." && pwd)}
clang_format=${FEDMOE_CLANG_FORMAT:-clang-format}
cd "$root"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files --cached --others --exclude-standard -- \
    '*.h' '*.cc' '*.cu' '*.cuh' '*.proto' | while read -r f; do [[ -f "$f" ]] && echo "$f"; done)
else
  mapfile -t files < <(find . -path ./build -prune -o -path './build-*' -prune -o -type f \
    \( -name '*.h' -o -name '*.cc' -o -name '*.cu' -o -name '*.cuh' -o -name '*.proto' \) -print)
fi
if ((${#files[@]} == 0)); then
  echo "check_format: no files found under $root" >&2
  exit 1
fi
"$clang_format" --dry-run -Werror "${files[@]}"
echo "check_format: ${#files[@]} files formatted"
