#!/usr/bin/env bash
# Runs the cargo-fuzz targets one at a time, each for SECONDS (default 600), with libFuzzer's
# memory limit (1 GiB RSS) and a 10 s per-input timeout. Each target starts from a copy of
# its seeds (fuzz/corpus/<target>) under fuzz/target/corpus/, so the repository keeps seeds
# only. Logs: fuzz/target/logs/<target>.log; crashes: fuzz/artifacts/<target>/.
# Exits non-zero if any target found a crash, a hang (timeout) or ran out of memory.
#
# Usage: fuzz/run.sh [seconds-per-target] [target...]
# Needs: cargo-fuzz (`cargo install cargo-fuzz --locked`); a stable toolchain works through
# RUSTC_BOOTSTRAP=1 (set here).
set -uo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-600}
shift || true
ALL=(csr cms_verify jws_verify ocsp_request policy_toml api_json)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 2
fi
mkdir -p fuzz/target/logs fuzz/target/corpus
failed=()
printf '%-14s %8s %12s %8s %8s %8s %9s %s\n' target seconds execs cov ft corpus rss_mb result
for t in "${TARGETS[@]}"; do
  seeds=fuzz/corpus/$t
  work=fuzz/target/corpus/$t
  log=fuzz/target/logs/$t.log
  if [ ! -d "$seeds" ]; then
    echo "no such target: $t (targets: ${ALL[*]})" >&2
    failed+=("$t"); continue
  fi
  mkdir -p "$work"
  cp -n "$seeds"/* "$work"/
  if ! nice -n 10 cargo fuzz build "$t" >"$log" 2>&1; then
    echo "$t does not build, see $log" >&2
    failed+=("$t"); continue
  fi
  start=$(date +%s)
  nice -n 10 cargo fuzz run "$t" "$work" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=1024 -timeout=10 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(ls "$work" | wc -l)
  result=ok
  if [ $rc -ne 0 ]; then
    result="FAILED (rc $rc, see $log)"
    failed+=("$t")
  fi
  printf '%-14s %8s %12s %8s %8s %8s %9s %s\n' "$t" "$took" "${execs:-?}" "${cov:-?}" "${ft:-?}" \
    "$corp" "${rss:-?}" "$result"
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "failed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
  exit 1
fi
