#!/usr/bin/env bash
# Installs everything isolate needs on a Debian 12 host (as root), then checks the host.
# Safe to run again. Used by the README's first command and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends util-linux procps iproute2 nftables git python3 ca-certificates >/dev/null

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'
isolate doctor
