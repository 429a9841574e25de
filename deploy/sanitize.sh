#!/usr/bin/env bash
# Sanitizer builds of the test suite (gcc's ASan, UBSan and TSan).
# Usage: deploy/sanitize.sh [asan|tsan] [--build-only] [extra ctest args...]
#   STIP_SANITIZE_TARGETS="format_test tokenizer_test": build and run only those.
#   asan: -fsanitize=address,undefined into build-asan/, runs the whole suite.
#   tsan: -fsanitize=thread into build-tsan/, runs the concurrency tests
#         (server_test, hostile_input_test, the client's sessions and Chat
#         service, e2e sessions and batching).
# Reports of third-party code (LibTorch, gRPC, OpenBLAS: not instrumented) are
# suppressed by deploy/sanitizers/*.supp, one comment per entry saying why.
# Slow: a full ASan build takes ~an hour on 2 cores; ccache makes reruns fast.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-asan}
shift || true
BUILD_ONLY=0
if [[ "${1:-}" == "--build-only" ]]; then BUILD_ONLY=1; shift; fi
JOBS=${STIP_JOBS:-$(nproc)}
GEN=()
if command -v ninja >/dev/null; then GEN=(-G Ninja); fi
LAUNCHER=()
if command -v ccache >/dev/null; then LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
SUPP=$ROOT/deploy/sanitizers

case "$MODE" in
  asan)
    BUILD_DIR=${STIP_BUILD_DIR:-build-asan}
    SANITIZE="address,undefined"
    TESTS=()  # the whole suite
    # detect_leaks: LibTorch and gRPC keep process-lifetime singletons that
    # LSan would list; lsan.supp names them. protect_shadow_gap=0: OpenBLAS /
    # OpenMP thread stacks are mapped where ASan's shadow gap would be.
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_odr_violation=0:protect_shadow_gap=0:${ASAN_OPTIONS:-}"
    export LSAN_OPTIONS="suppressions=$SUPP/lsan.supp:print_suppressions=0:${LSAN_OPTIONS:-}"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$SUPP/ubsan.supp:${UBSAN_OPTIONS:-}"
    ;;
  tsan)
    BUILD_DIR=${STIP_BUILD_DIR:-build-tsan}
    SANITIZE="thread"
    # The in-process server suites (sessions, batching, uploads, reaper,
    # shutdown), the client's sessions and Chat service (reconnects, the
    # caller watch that interrupts a step) and the concurrent three-process
    # test.
    TESTS=(-R "^(ServerTest|HostileInputTest|ChatService|RemoteSession|ThreePartiesTest\.Concurrent)")
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$SUPP/tsan.supp:${TSAN_OPTIONS:-}"
    ;;
  *) echo "usage: $0 [asan|tsan] [--build-only] [ctest args...]" >&2; exit 2 ;;
esac

# LibTorch's OpenMP pool is libgomp, which no sanitizer sees into: one thread.
export OMP_NUM_THREADS=1

if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cmake -S . -B "$BUILD_DIR" "${GEN[@]}" "${LAUNCHER[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSTIP_SANITIZE="$SANITIZE"
fi
# STIP_SANITIZE_TARGETS="format_test tokenizer_test ..." builds (and runs) only
# those test binaries: a partial run on a busy machine.
if [[ -n "${STIP_SANITIZE_TARGETS:-}" ]]; then
  read -r -a targets <<<"$STIP_SANITIZE_TARGETS"
  cmake --build "$BUILD_DIR" -j "$JOBS" --target "${targets[@]}"
elif [[ "$MODE" == tsan ]]; then
  cmake --build "$BUILD_DIR" -j "$JOBS" --target server_test hostile_input_test client_test \
    e2e_test stip-server stip-developer stip-client stip-generate
else
  cmake --build "$BUILD_DIR" -j "$JOBS"
fi
((BUILD_ONLY)) && exit 0
cd "$BUILD_DIR"
# Tests of binaries not built here show up as *_NOT_BUILT: left out.
ctest --output-on-failure -j "${STIP_TEST_JOBS:-2}" -E "_NOT_BUILT" "${TESTS[@]}" "$@"
