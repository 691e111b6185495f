#!/usr/bin/env bash
# Performance run: builds Signet (release), makes a private SoftHSM2 token and CA in a
# temporary directory, starts `signet serve`, and runs `signet bench` against it with CFSSL's
# `cfssl serve` beside it (same CSR, same client load) and the raw SoftHSM2 sign rate measured
# in the same run. Prints the table README.md's "Performance" section shows.
#
#   scripts/perf.sh                      (about 5 minutes; needs softhsm2, openssl, golang-cfssl)
#
# Environment: CLIENTS (default 8), DURATION seconds per measurement (10), ROUNDS (3),
# SCENARIOS (issuance,issuance-batch,ocsp,verification,verification-batch,mixed), BATCH items per
# batch request (16), KEEP=1 keeps the temporary directory,
# SIGNET_BIN uses that binary instead of building one.
set -euo pipefail

repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd -- "$repo_root"

die() { printf 'perf: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'perf: %s\n' "$*" >&2; }

command -v openssl >/dev/null || die "openssl is required (apt-get install -y openssl)"
command -v cfssl >/dev/null || die "cfssl is required (apt-get install -y golang-cfssl)"

if [ -n "${SIGNET_BIN:-}" ]; then
  bin=$SIGNET_BIN
else
  log "building (cargo build --release --bin signet)"
  cargo build --release --bin signet
  bin=$repo_root/target/release/signet
fi

home=$(mktemp -d "${TMPDIR:-/tmp}/signet-perf.XXXXXX")
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ -z "${KEEP:-}" ]; then rm -rf -- "$home"; else log "kept $home"; fi
}
trap cleanup EXIT

export SIGNET_HOME=$home SIGNET_BIN=$bin SIGNET_TOKEN_LABEL=signet-perf
unset SIGNET_FAKE_NOW SIGNET_FAULT
"$repo_root/softhsm/setup.sh" >/dev/null
export SOFTHSM2_CONF=$home/softhsm2.conf
config=$home/signet.toml
signet() { "$bin" --config "$config" "$@"; }
signet ca init >/dev/null 2>&1 || die "signet ca init failed"
signet tenant add "Perf Bank" >/dev/null 2>&1
( umask 077
  signet credential add --tenant "Perf Bank" --role ra-officer >"$home/ra.token" 2>/dev/null
  signet credential add --tenant "Perf Bank" --role gateway >"$home/gateway.token" 2>/dev/null )

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" --config "$config" serve --listen "127.0.0.1:$port" 2>"$home/serve.log" &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q "serving on" "$home/serve.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "serving on" "$home/serve.log" || die "signet serve did not start: $(cat "$home/serve.log")"
log "signet serve pid $server_pid on 127.0.0.1:$port; $(nproc) CPUs; $(softhsm2-util --version 2>/dev/null | head -1) SoftHSM2"

"$bin" bench --server "http://127.0.0.1:$port" --server-pid "$server_pid" \
  --token-file "$home/ra.token" --gateway-token-file "$home/gateway.token" \
  --scenario "${SCENARIOS:-issuance,issuance-batch,ocsp,verification,verification-batch,mixed}" \
  --clients "${CLIENTS:-8}" --batch "${BATCH:-16}" --duration "${DURATION:-10}" --rounds "${ROUNDS:-3}" \
  --cfssl "$(command -v cfssl)" --cfssl-db --reference-config "$config"
