#!/usr/bin/env bash
# The short fuzz run of CI (issue 24): every fuzz target of fuzz/ (libFuzzer through
# cargo-fuzz, stable Rust) for FUZZ_SECONDS each, over the committed corpus. Fails when a
# target crashes, hangs or runs out of memory; libFuzzer leaves the input that did it in
# fuzz/artifacts/<target>/ (reproduce it: fuzz/README.md). The committed corpus is only
# read: what a run finds goes to a temporary directory, deleted at the end.
#   FUZZ_SECONDS=20                             seconds of fuzzing per target
#   FUZZ_TARGETS="request decimal event_decode" the targets to run
#   CARGO_FUZZ_VERSION=0.13.2                   cargo-fuzz installed when missing
# Long runs (millions of executions, corpus minimization): fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds="${FUZZ_SECONDS:-20}"
read -r -a targets <<<"${FUZZ_TARGETS:-request decimal event_decode}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz ${CARGO_FUZZ_VERSION:-0.13.2}"
  cargo install cargo-fuzz --locked --version "${CARGO_FUZZ_VERSION:-0.13.2}"
fi

# fuzz/Cargo.lock is committed: refuse to run with other dependency versions than it names.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

# --sanitizer none: the code under test is safe Rust (the module's domain/ has no unsafe,
# scripts/check-module-purity.sh), and AddressSanitizer needs a nightly compiler. The build
# keeps cargo-fuzz's defaults otherwise: optimized, debug assertions and overflow checks on.
echo "[fuzz] building the targets"
cargo fuzz build --sanitizer none

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  echo "[fuzz] $t: ${seconds} s over fuzz/corpus/$t"
  mkdir -p "$work/$t"
  # New inputs go to the first directory (temporary); the committed corpus is only read.
  if cargo fuzz run --sanitizer none "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -dict="fuzz/dict/$t.dict" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -max_total_time="$seconds" -print_final_stats=1 2>"$work/$t.log"; then
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec)' \
      "$work/$t.log" || true
    echo "[fuzz] ok: $t"
  else
    grep -A 4 'panicked at' "$work/$t.log" >&2 || true
    tail -n 25 "$work/$t.log" >&2
    echo "[fuzz] FAILED: $t (the input is in fuzz/artifacts/$t/)" >&2
    failed+=("$t")
  fi
done

if ((${#failed[@]})); then
  echo "[fuzz] failed: ${failed[*]}" >&2
  exit 1
fi
echo "[fuzz] all targets ran ${seconds} s without a crash"
