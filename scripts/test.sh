#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, then every test against every installed backend.
set -euo pipefail
cd "$(dirname "$0")/.."
export ISOLATE_TEST_BACKENDS="${ISOLATE_TEST_BACKENDS:-nsjail,gvisor}"
python3 -m ruff check isolate tests scripts
python3 -m pytest -q -p no:cacheprovider "$@"
