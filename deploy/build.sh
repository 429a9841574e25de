#!/usr/bin/env bash
# Configures and builds stip into build/ (or $STIP_BUILD_DIR).
# Usage: deploy/build.sh [extra cmake args...]
#   STIP_BUILD_TARGETS="stip-server stip-client"  build only these targets (and
#                                                 what they need); default: all
#   STIP_JOBS=N                                   parallel jobs (default: nproc)
#   STIP_CCACHE=0                                 do not use ccache even where installed
# Where ccache is installed, the first configure makes it the compiler launcher
# (CMAKE_CXX_COMPILER_LAUNCHER), unless the arguments name a launcher already.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${STIP_BUILD_DIR:-build}
JOBS=${STIP_JOBS:-$(nproc)}
GEN=()
if command -v ninja >/dev/null; then GEN=(-G Ninja); fi
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  LAUNCHER=()
  if [[ "${STIP_CCACHE:-1}" != 0 && " $* " != *COMPILER_LAUNCHER* ]] &&
    command -v ccache >/dev/null; then
    LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    echo "build: compiling through ccache ($(command -v ccache))"
  fi
  cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${LAUNCHER[@]}" "$@"
elif (($# > 0)); then
  cmake -S . -B "$BUILD_DIR" "$@"
fi
TARGETS=()
for t in ${STIP_BUILD_TARGETS:-}; do TARGETS+=(--target "$t"); done
cmake --build "$BUILD_DIR" -j "$JOBS" "${TARGETS[@]}"
