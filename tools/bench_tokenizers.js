// The Rust side of tools/bench_tokenizers.sh: encodes TEXT_FILE paragraph by
// paragraph (one call each, in order) with Hugging Face tokenizers through
// Node and prints the same JSON line as stip-tokenize-bench.
// Usage: node bench_tokenizers.js NODE_MODULES tokenizer.json TEXT_FILE [ROUNDS]
'use strict';
const fs = require('fs');
const path = require('path');
const [nodeModules, tokenizerJson, textFile, roundsArg] = process.argv.slice(2);
const { Tokenizer } = require(path.resolve(nodeModules, '@anush008/tokenizers'));
const tok = Tokenizer.fromFile(tokenizerJson);
const text = fs.readFileSync(textFile, 'utf8');
const paras = [];
for (let pos = 0; pos < text.length;) {
  let end = text.indexOf('\n\n', pos);
  end = end < 0 ? text.length : end + 2;
  paras.push(text.slice(pos, end));
  pos = end;
}
(async () => {
  let best = Infinity, bytes = 0, ids = 0, checksum = 0n;
  for (let r = 0; r < Number(roundsArg || 3); ++r) {
    bytes = 0; ids = 0; checksum = 0n;
    const t0 = process.hrtime.bigint();
    for (const p of paras) {
      const e = await tok.encode(p, null, { addSpecialTokens: false });
      const v = e.getIds();
      bytes += Buffer.byteLength(p);
      for (const id of v) checksum = (checksum * 1000003n + BigInt(id)) % 1000000007n;
      ids += v.length;
    }
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  console.log(JSON.stringify({ kind: 'rust', bytes, ids, seconds: best, mb_per_s: bytes / best / 1e6,
                               checksum: Number(checksum) }));
})();
