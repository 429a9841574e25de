#!/usr/bin/env bash
# The README's test command: installs what is missing, configures, builds and
# runs the whole test suite with ctest. Arguments go to ctest: deploy/test.sh -L unit
# runs only the unit tests (labels: docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh
BUILD_DIR=${STIP_BUILD_DIR:-build}
cd "$BUILD_DIR"
ctest --output-on-failure -j "${STIP_TEST_JOBS:-2}" "$@"
