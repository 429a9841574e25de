#!/usr/bin/env bash
# The README's test command: installs what is missing, configures, builds and
# runs the whole test suite with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh
BUILD_DIR=${STIP_BUILD_DIR:-build}
cd "$BUILD_DIR"
ctest --output-on-failure -j "${STIP_TEST_JOBS:-2}" "$@"
