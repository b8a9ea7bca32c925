#!/usr/bin/env bash
# Installs everything isolate needs on a Debian 12 host (as root), then checks the host.
# Safe to run again. Used by the README's first command and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }  # wait for another apt run instead of failing
apt update -q
# mount + e2fsprogs: each sandbox's disk is an ext4 image, loop-mounted; nftables: the sandboxes' firewall (egress,
# exposed ports); systemd: systemd-analyze verifies the worker's unit; linux-libc-dev: the system call table the
# seccomp policy is rendered with for gVisor; gcc + libc6-dev: isolate builds its 50-line start helper (enter.c)
# once, static (without a compiler sh and setpriv do its work, ~2 ms slower per sandbox start)
apt install -y -q --no-install-recommends util-linux mount e2fsprogs procps iproute2 nftables git python3 ca-certificates systemd \
  linux-libc-dev gcc libc6-dev >/dev/null
# nodejs + npm: the real Cloudflare client drives the worker in tests (a host's own Node, e.g. nodesource's, is kept)
command -v npm >/dev/null || apt install -y -q --no-install-recommends nodejs npm >/dev/null

# gVisor: Debian 12's own runsc (2022) rejects statx(AT_NO_AUTOMOUNT), which breaks ls and stat;
# the build in bookworm-backports works and has the systrap platform. The suite is added to the
# machine's existing Debian source entry (whatever mirror it names), so no host name is written here.
sources=/etc/apt/sources.list.d/debian.sources
if [ -f "$sources" ] && grep -q '^Suites: bookworm bookworm-updates$' "$sources"; then
  sed -i 's/^Suites: bookworm bookworm-updates$/Suites: bookworm bookworm-updates bookworm-backports/' "$sources"
  apt update -q
fi
if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  apt install -y -q --no-install-recommends -t bookworm-backports runsc >/dev/null
else
  echo "install.sh: no bookworm-backports source found; gVisor (runsc) not installed" >&2
fi

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
