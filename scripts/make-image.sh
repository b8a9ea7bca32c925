#!/usr/bin/env bash
# Builds a root folder to use as a sandbox image: a minimal Debian with python3 (the agent
# needs it), git and CA certificates. Usage (as root):
#   bash scripts/make-image.sh /srv/isolate-images/bookworm [SUITE] [EXTRA,PACKAGES]
# then: get_sandbox("name", image="/srv/isolate-images/bookworm")
# The mirror is the one this host's apt already uses.
set -euo pipefail
target=${1:?usage: make-image.sh TARGET_DIR [SUITE] [EXTRA,PACKAGES]}
suite=${2:-bookworm}
extra=${3:-}
command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
include="python3,git,ca-certificates${extra:+,$extra}"
debootstrap --variant=minbase --include="$include" "$suite" "$target" ${mirror:+"$mirror"}
mkdir -p "$target/workspace"
chroot "$target" apt-get clean
echo "image ready: $target"
