#!/usr/bin/env bash
# Make a private SoftHSM2 token and a Signet config for development and tests.
#
#   SIGNET_HOME=/some/dir softhsm/setup.sh      (default: ./.signet)
#
# Idempotent: files that already exist are kept, and `signet token init` is a
# no-op when the token already exists. PINs are written to files (mode 0600)
# and never appear on a command line.
#
# Environment:
#   SIGNET_HOME         where the token, PINs, config and database live
#   SIGNET_BIN          signet binary to use (default: target/release/signet,
#                       target/debug/signet, or build one with cargo)
#   SIGNET_TOKEN_LABEL  token label written into a new signet.toml (default signet-dev)
set -euo pipefail

SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd -- "$script_dir/.." && pwd -P)

SIGNET_HOME=${SIGNET_HOME:-./.signet}
mkdir -p -- "$SIGNET_HOME"
SIGNET_HOME=$(cd -- "$SIGNET_HOME" && pwd -P)
export SIGNET_HOME
case $SIGNET_HOME in
  *'"'* | *\\*) die "SIGNET_HOME must not contain a quote or backslash (it goes into TOML strings)" ;;
esac

token_label=${SIGNET_TOKEN_LABEL:-signet-dev}
case $token_label in
  *'"'* | *\\* | '') die "SIGNET_TOKEN_LABEL must be non-empty and contain no quote or backslash" ;;
esac

# --- 1. SoftHSM2 --------------------------------------------------------------
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

if [ ! -e "$SOFTHSM_MODULE" ]; then
  command -v apt-get >/dev/null 2>&1 \
    || die "$SOFTHSM_MODULE is missing and apt-get is not available; install SoftHSM2 2.6 by hand"
  log "installing softhsm2 (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y softhsm2 </dev/null; then
    as_root apt-get update </dev/null
    as_root apt-get install -y softhsm2 </dev/null
  fi
  [ -e "$SOFTHSM_MODULE" ] || die "softhsm2 installed but $SOFTHSM_MODULE is still missing"
fi

# --- 2. token directory and SoftHSM2 config -----------------------------------
old_umask=$(umask)
umask 077
mkdir -p -- "$SIGNET_HOME/tokens"

conf=$SIGNET_HOME/softhsm2.conf
if [ ! -e "$conf" ]; then
  cat >"$conf" <<CONF
# SoftHSM2 configuration for Signet (written by softhsm/setup.sh)
directories.tokendir = $SIGNET_HOME/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
  log "wrote $conf"
fi

# --- 3. PIN files (0600, random, never on a command line) ---------------------
make_pin_file() {
  local file=$1
  if [ ! -e "$file" ]; then
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$file"
    chmod 600 -- "$file"
    log "wrote $file"
  fi
}
make_pin_file "$SIGNET_HOME/so.pin"
make_pin_file "$SIGNET_HOME/user.pin"

# --- 4. signet.toml -----------------------------------------------------------
config=$SIGNET_HOME/signet.toml
if [ ! -e "$config" ]; then
  policies=$repo_root/policies
  [ -d "$policies" ] || log "warning: $policies does not exist (yet)"
  cat >"$config" <<TOML
# Signet configuration (written by softhsm/setup.sh)
[ca]
organization = "Signet Demo Bank"
country = "CN"
root_common_name = "Signet Demo Root CA"
customer_ca_common_name = "Signet Demo Customer CA"
teller_ca_common_name = "Signet Demo Teller CA"
root_validity_days = 7300
issuing_validity_days = 3650
base_url = "http://127.0.0.1:8080"
crl_shards = 1
crl_next_update_hours = 24

[hsm]
module = "$SOFTHSM_MODULE"
token = "$token_label"
pin_file = "$SIGNET_HOME/user.pin"
so_pin_file = "$SIGNET_HOME/so.pin"
softhsm2_conf = "$conf"
sessions = 4

[store]
path = "$SIGNET_HOME/signet.db"

[audit]
checkpoint_every = 100
checkpoint_file = "$SIGNET_HOME/audit-checkpoints.jsonl"

[issuance]
timeout_secs = 300
policies = "$policies"
TOML
  log "wrote $config"
fi
umask "$old_umask"

# --- 5. the signet binary -------------------------------------------------------
if [ -n "${SIGNET_BIN:-}" ]; then
  [ -x "$SIGNET_BIN" ] || die "SIGNET_BIN=$SIGNET_BIN is not an executable file"
elif [ -x "$repo_root/target/release/signet" ]; then
  SIGNET_BIN=$repo_root/target/release/signet
elif [ -x "$repo_root/target/debug/signet" ]; then
  SIGNET_BIN=$repo_root/target/debug/signet
else
  command -v cargo >/dev/null 2>&1 || die "no signet binary and no cargo to build one (https://rustup.rs)"
  log "building signet (cargo build --release), this takes a minute or two the first time"
  (cd -- "$repo_root" && cargo build --release --bin signet)
  SIGNET_BIN=$repo_root/target/release/signet
fi

# --- 6. the token ---------------------------------------------------------------
export SOFTHSM2_CONF=$conf
"$SIGNET_BIN" --config "$config" token init

cat <<DONE

SoftHSM2 token "$(sed -n 's/^token = "\(.*\)"$/\1/p' "$config")" is ready.
  export SOFTHSM2_CONF=$conf
  config: $config
DONE
