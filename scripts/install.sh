#!/usr/bin/env bash
# Installs everything isolate needs on a Debian 12 host (as root), then checks the host.
# Safe to run again. Used by the README's first command and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# mount + e2fsprogs: each sandbox's disk is an ext4 image, loop-mounted; nftables: the sandboxes' firewall (egress,
# exposed ports); systemd: systemd-analyze verifies the worker's unit
apt-get install -y -q --no-install-recommends util-linux mount e2fsprogs procps iproute2 nftables git python3 ca-certificates systemd >/dev/null
# nodejs + npm: the real Cloudflare client drives the worker in tests (a host's own Node, e.g. nodesource's, is kept)
command -v npm >/dev/null || apt-get install -y -q --no-install-recommends nodejs npm >/dev/null

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[worker,test]'

# The unit's ExecStart: a fixed path to this interpreter's `isolate` (pip may have put it anywhere)
if [ ! -e /usr/local/bin/isolate ] || grep -q "isolate-wrapper" /usr/local/bin/isolate; then
  printf '#!/bin/sh\n# isolate-wrapper (scripts/install.sh)\nexec %s -m isolate.cli "$@"\n' "$(python3 -c 'import sys; print(sys.executable)')" \
    > /usr/local/bin/isolate
  chmod 755 /usr/local/bin/isolate
fi

# Cloudflare's client for the worker's conformance test (tests/cloudflare)
(cd tests/cloudflare && npm install --no-audit --no-fund --silent)

isolate doctor
