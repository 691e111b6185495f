#!/usr/bin/env bash
# Run the whole test suite: unit tests, and integration tests against a real
# SoftHSM2 token, the OpenSSL command line and pkilint.
#
#   ./test.sh                      everything
#   ./test.sh --test cli_issue     with arguments: `cargo test --release <arguments>`
#
# Installs what is missing first: on Debian, softhsm2 opensc faketime openssl p11-kit
# python3-venv postgresql (apt); pkilint in a virtualenv at target/tools/venv (PyPI);
# starts a local PostgreSQL (scripts/local-postgres.sh) for the PostgreSQL runs.
set -euo pipefail

log() { printf 'test.sh: %s\n' "$*" >&2; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

repo_root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
cd -- "$repo_root"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# --- system packages (Debian) ------------------------------------------------------
apt_packages=(softhsm2 opensc faketime openssl python3-venv procps curl postgresql p11-kit p11-kit-modules)
if command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${apt_packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y "${missing[@]}" </dev/null; then
      as_root apt-get update </dev/null
      as_root apt-get install -y "${missing[@]}" </dev/null
    fi
  fi
else
  for c in softhsm2-util openssl python3; do
    command -v "$c" >/dev/null 2>&1 || die "$c not found; install ${apt_packages[*]} (or your system's equivalents)"
  done
fi
[ -e /usr/lib/softhsm/libsofthsm2.so ] || die "/usr/lib/softhsm/libsofthsm2.so is missing (softhsm2)"
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (https://rustup.rs)"

# --- pkilint --------------------------------------------------------------------------
# Pinned: a new pkilint release can add findings; bump deliberately.
PKILINT_VERSION=0.13.3
venv=$repo_root/target/tools/venv
if [ ! -x "$venv/bin/lint_pkix_cert" ] \
  || [ "$(cat "$venv/.pkilint-version" 2>/dev/null)" != "$PKILINT_VERSION" ]; then
  log "installing pkilint $PKILINT_VERSION into $venv (pip)"
  rm -rf -- "$venv"
  mkdir -p -- "$(dirname -- "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "pkilint==$PKILINT_VERSION" </dev/null
  [ -x "$venv/bin/lint_pkix_cert" ] || die "pip installed pkilint but $venv/bin/lint_pkix_cert is missing"
  printf '%s\n' "$PKILINT_VERSION" >"$venv/.pkilint-version"
fi
export PKILINT_BIN=$venv/bin

# --- PostgreSQL ---------------------------------------------------------------------------
# A local server (started with pg_ctlcluster if down); the store tests and the multi-process
# tests make their databases there, and the store, API and verification suites run once
# more with every fixture's store in it. An explicit SIGNET_TEST_POSTGRES is kept.
if [ -z "${SIGNET_TEST_POSTGRES:-}" ]; then
  SIGNET_TEST_POSTGRES=$(bash "$repo_root/scripts/local-postgres.sh") \
    || die "cannot start a local PostgreSQL (scripts/local-postgres.sh); set SIGNET_TEST_POSTGRES to a server's postgres:// URL"
  # One line, one URL: anything else (a notice that slipped onto standard output) would
  # only surface later as "invalid connection string" in every PostgreSQL test.
  [[ "$SIGNET_TEST_POSTGRES" =~ ^postgres(ql)?://[^[:space:]]+$ ]] \
    || die "scripts/local-postgres.sh printed something other than one postgres:// URL: $SIGNET_TEST_POSTGRES"
  log "PostgreSQL for the tests: $SIGNET_TEST_POSTGRES"
fi
export SIGNET_TEST_POSTGRES

# --- tests --------------------------------------------------------------------------------
# Release profile: the same build as quickstart.sh and softhsm/setup.sh use
# (target/release/signet), so one build serves both; the tests themselves then run
# in seconds (P-256 and DER code is many times slower unoptimized).
if [ "$#" -eq 0 ]; then
  # Every target (lib, bin, integration tests, benches and examples in test mode),
  # then the doctests, which --all-targets leaves out.
  # --no-fail-fast: report every failing test binary, not just the first.
  log "cargo test --release --all-targets --no-fail-fast"
  cargo test --release --all-targets --no-fail-fast
  log "cargo test --release --doc"
  cargo test --release --doc
  # The store, API and verification suites again, each fixture's store in PostgreSQL.
  log "SIGNET_TEST_FIXTURE_STORE=postgres cargo test --release (store, api, verify suites)"
  SIGNET_TEST_FIXTURE_STORE=postgres cargo test --release --no-fail-fast \
    --test store --test api --test verify --test verify_formats
else
  log "cargo test --release $*"
  cargo test --release "$@"
fi
