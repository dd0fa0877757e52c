#!/usr/bin/env bash
# Sets up everything the test suite needs on Debian 12 (as root) and runs it:
# system packages (real servers and reference tools), a virtualenv with the project and its
# test tools, lint/type checks, then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(age zstd tar openssh-server openssh-client snmpd snmp tcpdump iproute2 procps
  iptables nftables sip-tester tshark redmine redmine-sqlite time lintian fakeroot man-db
  systemd python3-venv)
missing=()
for pkg in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "== apt-get install ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

echo "== ruff + mypy"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

echo "== pytest"
exec .venv/bin/python -m pytest "$@"
