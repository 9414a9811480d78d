#!/usr/bin/env bash
# The system packages the test suite needs, installed by `make test` before anything else.
# Nothing missing: exits at once, silently. Something missing: installs the Debian packages
# with apt-get, as root or through `sudo -n` (never a password prompt); when neither can,
# stops with the one command that installs them.
set -euo pipefail

missing=()   # commands not on PATH
packages=()  # the Debian packages that bring them, each once

# want PACKAGE COMMAND...: PACKAGE is needed unless one of the COMMANDs is on PATH.
want() {
  local package=$1 command
  shift
  for command in "$@"; do
    command -v "$command" >/dev/null 2>&1 && return 0
  done
  missing+=("$1")
  [[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
}

want redis-server redis-server      # Redis 7 (Valkey 8 comes from a wheel)
want redis-tools redis-cli          # the Redis Cluster tests build their cluster with it
want prometheus promtool            # promtool check metrics / rules / config
want prometheus prometheus          # the end-to-end scrape of a live daemon
want chromium chromium chromium-browser  # the status page in a real headless browser
want openssl openssl                # TLS test certificates
want shellcheck shellcheck          # this script, .ci/run and the workflows' run: steps
want lua-check luacheck             # the Lua scripts in janitor/redis_io/lua/ (tests/integration/test_lua.py)
# kubectl (for `kubectl kustomize`), hadolint and actionlint come from PyPI with the dev extra.

[ ${#packages[@]} -eq 0 ] && exit 0

command_line="apt-get update && apt-get install -y --no-install-recommends ${packages[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "make test needs ${missing[*]} (Debian packages: ${packages[*]}); install them with your package manager" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "make test needs ${missing[*]}: install them with: sudo sh -c '$command_line'" >&2
  exit 1
fi
echo "make test: installing ${packages[*]} (apt-get) ..." >&2
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
