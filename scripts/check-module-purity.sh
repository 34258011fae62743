#!/usr/bin/env bash
# The module's layering, checked with grep (CI gate):
#
#   bash scripts/check-module-purity.sh
#
# - module/src/domain/ is pure Rust: no file there may use `redis_module`, `unsafe`, the
#   raw C types of `std::ffi`/`std::os::raw`, or raw pointers (`*mut`, `*const`).
# - every `unsafe` of the module is under module/src/host/: the files with `unsafe` outside
#   it are printed, and there must be none.
#
# Whole-line `//` comments are not code and are skipped (a doc comment may name what the
# code must not use). Exit status: 0 when both hold, 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/module/src"
status=0

# Lines of Rust files under $1 matching the extended regex $2, outside whole-line comments.
code_matches() {
  local dir="$1" pattern="$2"
  grep -rnE --include='*.rs' "$pattern" "$dir" | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true
}

if [[ ! -d "$SRC/domain" || ! -d "$SRC/host" ]]; then
  echo "check-module-purity: $SRC/domain or $SRC/host is missing" >&2
  exit 1
fi

impure="$(code_matches "$SRC/domain" '\bredis_module\b|\bunsafe\b|std::ffi|std::os::raw|\*mut\b|\*const\b')"
if [[ -n "$impure" ]]; then
  echo "FAIL: module/src/domain must not touch Redis or raw pointers:" >&2
  echo "${impure//$ROOT\//}" >&2
  status=1
else
  echo "ok: module/src/domain uses no redis_module, unsafe, std::ffi or raw pointers"
fi

outside=""
while IFS= read -r file; do
  case "$file" in
    "$SRC/host/"*) ;;
    *) outside+="${file#"$ROOT"/}"$'\n' ;;
  esac
done < <(code_matches "$SRC" '\bunsafe\b' | cut -d: -f1 | sort -u)

echo "files with unsafe outside module/src/host (must be none):"
if [[ -n "$outside" ]]; then
  printf '%s' "$outside"
  status=1
else
  echo "  (none)"
fi

in_host="$(code_matches "$SRC/host" '\bunsafe\b' | cut -d: -f1 | sort | uniq -c |
  sed "s|$SRC/||" | awk '{printf "  %s: %s\n", $2, $1}')"
echo "lines with unsafe under module/src/host:"
echo "${in_host:-  (none)}"

exit "$status"
