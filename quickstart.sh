#!/usr/bin/env bash
# Quick start: a private SoftHSM2 token, a three-CA hierarchy in it, and one demo
# customer certificate that OpenSSL verifies.
#
#   ./quickstart.sh                 (state goes to ./.signet in the repo; override with SIGNET_HOME)
#
# Safe to run again: the token and the CA are made once, and a new demo
# certificate is issued on each run.
set -euo pipefail

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'quickstart: error: %s\n' "$*" >&2; exit 1; }

repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
cd -- "$repo_root"

SIGNET_HOME=${SIGNET_HOME:-./.signet}
mkdir -p -- "$SIGNET_HOME"
SIGNET_HOME=$(cd -- "$SIGNET_HOME" && pwd -P)
export SIGNET_HOME

command -v openssl >/dev/null 2>&1 || die "openssl is required (apt-get install -y openssl)"

# --- build -------------------------------------------------------------------------
if [ -z "${SIGNET_BIN:-}" ]; then
  command -v cargo >/dev/null 2>&1 || die "cargo is required to build signet (https://rustup.rs)"
  log "building signet (cargo build --release)"
  cargo build --release --bin signet
  SIGNET_BIN=$repo_root/target/release/signet
fi
export SIGNET_BIN

# --- token and config ----------------------------------------------------------------
log "SoftHSM2 token and config (softhsm/setup.sh)"
"$repo_root/softhsm/setup.sh"

config=$SIGNET_HOME/signet.toml
export SOFTHSM2_CONF=$SIGNET_HOME/softhsm2.conf
signet() { "$SIGNET_BIN" --config "$config" "$@"; }

# --- CA hierarchy -----------------------------------------------------------------
ca_dir=$SIGNET_HOME/ca
mkdir -p -- "$ca_dir"
if signet ca export --out "$ca_dir" >/dev/null 2>&1; then
  log "CA already initialized; chain exported to $ca_dir"
  # What a newer Signet needs and this home's ceremony did not make (e.g. the PIN key).
  signet ca upgrade
else
  log "initializing the CA hierarchy in the token (signet ca init)"
  signet ca init
  signet ca export --out "$ca_dir"
  log "chain exported to $ca_dir"
fi
for f in root.pem customer-ca.pem teller-ca.pem; do
  [ -s "$ca_dir/$f" ] || die "signet ca export did not write $ca_dir/$f"
done

# --- demo customer certificate -------------------------------------------------------
demo=$SIGNET_HOME/demo
mkdir -p -- "$demo"
log "demo customer key and CSR (OpenSSL, P-256)"
(
  umask 077
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=demo" \
    -keyout "$demo/customer.key" -out "$demo/customer.csr" 2>/dev/null
)

log "issuing the customer certificate (signet issue --profile customer)"
signet issue --profile customer --csr "$demo/customer.csr" \
  --subject "CN=张三,serialNumber=110101199003071234" \
  --out "$demo/customer.pem"

log "verifying with OpenSSL"
openssl verify -x509_strict -CAfile "$ca_dir/root.pem" -untrusted "$ca_dir/customer-ca.pem" \
  "$demo/customer.pem"
openssl x509 -in "$demo/customer.pem" -noout -subject -nameopt utf8

# --- a demo bank and its registration officer ---------------------------------------
if ! signet credential list --tenant "Demo Bank" >/dev/null 2>&1; then
  log "registering a demo bank (signet tenant add \"Demo Bank\")"
  signet tenant add "Demo Bank" >/dev/null
fi
token_file=$demo/ra-officer.token
if [ ! -s "$token_file" ]; then
  log "making an ra-officer credential for it (token in $token_file, mode 0600)"
  ( umask 077; signet credential add --tenant "Demo Bank" --role ra-officer >"$token_file" )
fi

listen=${SIGNET_LISTEN:-127.0.0.1:8080}
cat <<DONE

Ready. Everything lives in $SIGNET_HOME:
  CA chain:          $ca_dir/{root,customer-ca,teller-ca}.pem
  demo certificate:  $demo/customer.pem (key: $demo/customer.key)
  ra-officer token:  $token_file
To run signet yourself:
  export SOFTHSM2_CONF=$SOFTHSM2_CONF
  $SIGNET_BIN --config $config --help

Serving the API on http://$listen (Ctrl-C stops it; see README.md for curl examples).
DONE
if [ -n "${SIGNET_NO_SERVE:-}" ]; then
  exit 0
fi
exec "$SIGNET_BIN" --config "$config" serve --listen "$listen"
