#!/usr/bin/env bash
# The README's test command, for a fresh machine as much as for CI: installs with apt-get the
# programs the tests drive that are missing, then runs `cargo test --all-features` with this
# script's arguments.
#
#   scripts/test.sh                                  # every test, TLS included
#   scripts/test.sh --test it round_trip::           # one module of the integration crate
#   scripts/test.sh --release --test soak -- --nocapture
#
# Installing needs root: run as root, or as a user with sudo (under CI=true, sudo must not
# need a password). Without either, the script stops and names the packages to install.
# A test whose program is still missing fails, naming the program: nothing is skipped.
# .ci/run runs this script as its test step.
set -euo pipefail
cd "$(dirname "$0")/.."

# The one list of what the tests (and the benchmark) drive, as command:Debian-package.
# The protocol examples are tested with real clients nobody here wrote: curl, wget, wrk and ab
# against http_hello (its downloads checked with sha256sum); redis-cli and redis-benchmark
# against kv_server, redis-server beside it (the differential test); swaks and python3's
# smtplib against smtp_server. The benchmark compares kv_server with redis-server and
# http_hello with nginx (it skips a peer that is missing). Over TLS and Unix sockets: openssl
# (the CLI makes the test certificates; s_client), socat, OpenBSD netcat (`nc -U`), python3's
# ssl, and Perl's Net::SSLeay for swaks's TLS. Deployment: a real haproxy in front of two echo
# servers, systemd-socket-activate, and flock(1) on a Unix socket's lock file.
TOOLS=(
  curl:curl
  wget:wget
  sha256sum:coreutils
  wrk:wrk
  ab:apache2-utils
  redis-cli:redis-tools
  redis-benchmark:redis-tools
  redis-server:redis-server
  nginx:nginx-light
  swaks:swaks
  python3:python3
  openssl:openssl
  socat:socat
  nc.openbsd:netcat-openbsd
  haproxy:haproxy
  systemd-socket-activate:systemd
  flock:util-linux
)
# A Perl module, not a command: swaks --tls-on-connect needs it.
PERL_MODULE=Net::SSLeay
PERL_MODULE_PACKAGE=libnet-ssleay-perl

say() { echo "scripts/test.sh: $*" >&2; }

# Sets `missing` (what is absent) and `packages` (the Debian packages that provide it, once each).
find_missing() {
  missing=()
  packages=()
  local entry
  for entry in "${TOOLS[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || add_missing "${entry%%:*}" "${entry#*:}"
  done
  perl "-M$PERL_MODULE" -e 1 >/dev/null 2>&1 || add_missing "$PERL_MODULE" "$PERL_MODULE_PACKAGE"
}
# add_missing WHAT PACKAGE
add_missing() {
  missing+=("$1")
  local package=$2 known
  for known in ${packages[@]+"${packages[@]}"}; do
    [ "$known" = "$package" ] && return 0
  done
  packages+=("$package")
}

install_missing() {
  local -a as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      say "missing: ${missing[*]}"
      say "not root and no sudo: as root, run  apt-get install -y ${packages[*]}"
      exit 1
    fi
    as_root=(sudo)
    # In CI nobody can type a password: fail at once rather than wait for one.
    [ "${CI:-}" = true ] && as_root=(sudo -n)
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing: ${missing[*]}"
    say "no apt-get here: install what provides them (Debian packages: ${packages[*]})"
    exit 1
  fi
  say "installing ${packages[*]} (for ${missing[*]})"
  ${as_root[@]+"${as_root[@]}"} apt-get update -qq
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq "${packages[@]}" >/dev/null
}

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo is not installed (https://rustup.rs)"
  exit 1
fi

find_missing
if [ ${#missing[@]} -gt 0 ]; then
  install_missing
  find_missing
  if [ ${#missing[@]} -gt 0 ]; then
    say "still missing after apt-get install: ${missing[*]} (packages ${packages[*]})"
    exit 1
  fi
fi

exec cargo test --all-features "$@"
