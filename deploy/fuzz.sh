#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang (ASan + UBSan) into
# build-fuzz/ and runs each for a bounded time, then prints executions,
# executions per second, corpus growth and findings per target.
# Usage: deploy/fuzz.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]
#   targets: fuzz_safetensors fuzz_model_config fuzz_bpe_tokenizer
#            fuzz_sentencepiece fuzz_tokenizer_json fuzz_wordpiece
#            fuzz_step_request fuzz_image_decoder fuzz_jinja (default: all)
# The working corpus grows in build-fuzz/corpus/<target>/ (seeded from
# fuzz/corpus/, tests/data and models/); crashing inputs land in
# build-fuzz/findings/<target>/ (copy one to fuzz/regressions/<target>/ once
# fixed: the ctest smoke of build-fuzz replays it). Exits 1 on any finding.
# Needs clang-14 and libclang-rt-14-dev (deploy/install-deps.sh --fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-60}
shift || true
ALL=(fuzz_safetensors fuzz_model_config fuzz_bpe_tokenizer fuzz_sentencepiece fuzz_tokenizer_json
     fuzz_wordpiece fuzz_step_request fuzz_image_decoder fuzz_jinja)
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL[@]}")
BUILD_DIR=${STIP_FUZZ_BUILD_DIR:-build-fuzz}
CXX_BIN=${STIP_FUZZ_CXX:-clang++-14}
GEN=()
if command -v ninja >/dev/null; then GEN=(-G Ninja); fi
LAUNCHER=()
if command -v ccache >/dev/null; then LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi

if ! command -v "$CXX_BIN" >/dev/null; then
  echo "fuzz.sh: $CXX_BIN not found; run deploy/install-deps.sh --fuzz" >&2
  exit 2
fi
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  cmake -S . -B "$BUILD_DIR" "${GEN[@]}" "${LAUNCHER[@]}" -DCMAKE_CXX_COMPILER="$CXX_BIN" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTIP_FUZZ=ON -DSTIP_BUILD_TESTS=OFF
fi
cmake --build "$BUILD_DIR" -j "${STIP_JOBS:-$(nproc)}" --target stip_fuzzers

# Seeds of each target.
seed() {
  local target=$1 dir=$2
  mkdir -p "$dir"
  case "$target" in
    fuzz_safetensors)
      cp -n fuzz/corpus/safetensors/* "$dir/"
      for f in tests/data/hf-reference/*/reference.safetensors; do
        cp -n "$f" "$dir/$(basename "$(dirname "$f")")-reference.safetensors"
      done ;;
    fuzz_model_config)
      for f in tests/data/hf-reference/*/config.json models/*/config.json; do
        cp -n "$f" "$dir/$(basename "$(dirname "$f")")-config.json"
      done ;;
    fuzz_bpe_tokenizer | fuzz_sentencepiece) cp -n fuzz/corpus/tokenizer/* "$dir/" ;;
    fuzz_tokenizer_json) cp -n fuzz/corpus/tokenizer_json/* "$dir/" ;;
    fuzz_wordpiece) cp -n fuzz/corpus/wordpiece/* fuzz/corpus/tokenizer/* "$dir/" ;;
    fuzz_step_request) cp -n fuzz/corpus/step_request/* "$dir/" ;;
    fuzz_image_decoder)
      cp -n fuzz/corpus/image/* "$dir/"
      for f in models/*/samples/*.png; do cp -n "$f" "$dir/$(basename "$(dirname "$(dirname "$f")")")-$(basename "$f")"; done ;;
    fuzz_jinja)
      cp -n fuzz/corpus/jinja/* "$dir/"
      for f in models/*/chat_template.jinja; do
        cp -n "$f" "$dir/$(basename "$(dirname "$f")")-chat_template.jinja"
      done ;;
  esac
  if [[ -d "fuzz/regressions/$target" ]]; then cp -n "fuzz/regressions/$target"/* "$dir/" 2>/dev/null || true; fi
}

# JSON-shaped inputs get a dictionary of the keys the parsers look for.
dict_for() {
  case "$1" in
    fuzz_safetensors | fuzz_model_config | fuzz_tokenizer_json) echo "-dict=$ROOT/fuzz/json.dict" ;;
    fuzz_jinja) echo "-dict=$ROOT/fuzz/jinja.dict" ;;
  esac
}

# LibTorch (not instrumented) keeps allocations for the process's lifetime.
extra_for() {
  case "$1" in
    fuzz_step_request) echo "-detect_leaks=0" ;;
  esac
}

export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:${UBSAN_OPTIONS:-}"
export OMP_NUM_THREADS=1
SUMMARY=()
FOUND=0
for t in "${TARGETS[@]}"; do
  bin="$BUILD_DIR/fuzz/$t"
  [[ -x "$bin" ]] || { echo "no such fuzz target: $t" >&2; exit 2; }
  corpus="$BUILD_DIR/corpus/$t"
  findings="$BUILD_DIR/findings/$t"
  mkdir -p "$findings"
  seed "$t" "$corpus"
  before=$(ls "$corpus" | wc -l)
  log="$BUILD_DIR/findings/$t.log"
  echo "== $t: ${SECS}s, corpus $before inputs"
  set +e
  # shellcheck disable=SC2046
  "$bin" "$corpus" -max_total_time="$SECS" -print_final_stats=1 -timeout=20 -rss_limit_mb=4096 \
    -artifact_prefix="$findings/" $(dict_for "$t") $(extra_for "$t") >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  after=$(ls "$corpus" | wc -l)
  crashes=$(find "$findings" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  if ((rc != 0 || crashes > 0)); then
    FOUND=1
    echo "   FINDING (exit $rc): see $log and $findings/"
    grep -m3 -E 'ERROR: |runtime error|SUMMARY' "$log" | sed 's/^/   /' || true
  fi
  SUMMARY+=("$(printf '%-20s %12s %8s %8s %10s %9s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$before->$after" "$crashes")")
done
echo
printf '%-20s %12s %8s %8s %10s %9s\n' target executions exec/s cov corpus findings
printf '%s\n' "${SUMMARY[@]}"
exit "$FOUND"
