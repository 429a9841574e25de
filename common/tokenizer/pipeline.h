// The stages of a Hugging Face `tokenizer.json` pipeline, as the `tokenizers`
// library defines them: normalizer -> pre-tokenizer -> model ->
// post-processor, and the decoder back. Internal to common/tokenizer/; the
// tokenizer.json loader (hf_tokenizer.cc) assembles them. Each component kind
// lives in its own file: normalizers.cc, pre_tokenizers.cc, bpe_model.cc,
// wordpiece_model.cc, unigram_model.cc, post_processors.cc, decoders.cc,
// added_tokens.cc. Offsets are not tracked (nothing here needs them).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace stip::tokenizer_pipeline {

using json = nlohmann::json;

// A piece of text on its way through the pipeline.
struct Piece {
  std::string text;
  // The piece starts at offset 0 of the caller's text (Metaspace's
  // prepend_scheme "first" looks at this).
  bool at_start = false;
  // `text` holds raw bytes that stand for GPT-2's byte-level alphabet (one
  // character per byte): ByteLevel's mapping is applied lazily, by the BPE
  // model directly on bytes (fast), or by Materialize() for anything else.
  bool byte_level = false;
};

// Replaces the raw bytes of a byte_level piece by their byte-level characters.
void Materialize(Piece* piece);
// GPT-2's bytes_to_unicode(): the UTF-8 of each byte's character, and back.
const std::string& ByteLevelChar(unsigned char byte);
// The byte of a byte-level character, or -1.
int ByteOfByteLevelChar(uint32_t code_point);

// A compiled regular expression (PCRE2, UTF + Unicode properties), with
// Oniguruma's meaning of \s, \d and \w (what Hugging Face's regexes use).
class Regex {
 public:
  // Throws InvalidArgument naming `source` if the pattern does not compile.
  Regex(const std::string& pattern, const std::string& source);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Calls f(start, end) for each match left to right, as Oniguruma's
  // find_iter does (an empty match right after a match is skipped).
  template <typename F>
  void ForEachMatch(std::string_view s, F&& f) const {
    size_t pos = 0;
    std::optional<size_t> last_end;
    size_t start, end;
    while (pos <= s.size() && Find(s, pos, &start, &end)) {
      if (start == end && last_end && *last_end == end) {
        if (start >= s.size()) break;
        pos = start + CharLen(s, start);
        continue;
      }
      f(start, end);
      last_end = end;
      if (start == end) {
        if (end >= s.size()) break;
        pos = end + CharLen(s, end);
      } else {
        pos = end;
      }
    }
  }
  const std::string& pattern() const { return pattern_; }

 private:
  bool Find(std::string_view s, size_t from, size_t* start, size_t* end) const;
  static size_t CharLen(std::string_view s, size_t at);
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
};

// Hugging Face's Pattern: a literal string or a regex ({"String": ..} or
// {"Regex": ..}).
class Pattern {
 public:
  Pattern(const json& j, const std::string& source);
  // (start, end, is_match) spans covering all of `s`, as find_matches does.
  struct Span {
    size_t start, end;
    bool match;
  };
  std::vector<Span> FindMatches(std::string_view s) const;
  // Replaces every match by `content`.
  std::string ReplaceAll(std::string_view s, std::string_view content) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
};

// ---------------------------------------------------------------------------

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void Normalize(std::string* text) const = 0;
};
// Null for a null normalizer. Throws Unimplemented naming an unsupported type,
// InvalidArgument for a malformed one.
std::unique_ptr<Normalizer> MakeNormalizer(const json& j, const std::string& source);

// BERT's normalizer (also used for vocab.txt directories).
std::unique_ptr<Normalizer> MakeBertNormalizer(bool clean_text, bool handle_chinese_chars,
                                               std::optional<bool> strip_accents, bool lowercase);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces each piece by its parts (in order).
  virtual void PreTokenize(std::vector<Piece>* pieces) const = 0;
};
std::unique_ptr<PreTokenizer> MakePreTokenizer(const json& j, const std::string& source);
std::unique_ptr<PreTokenizer> MakeBertPreTokenizer();

class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids of one pre-tokenized piece.
  virtual void Tokenize(const Piece& piece, std::vector<int64_t>* ids) const = 0;
  virtual std::optional<int64_t> TokenToId(const std::string& token) const = 0;
  // Null if the id has no token.
  virtual const std::string* IdToToken(int64_t id) const = 0;
  // 1 + the largest id.
  virtual int64_t size() const = 0;
  virtual std::string kind() const = 0;  // "bpe", "wordpiece", "unigram"
};
// model.type BPE / WordPiece / Unigram (BPE if there is no type and merges).
std::unique_ptr<Model> MakeModel(const json& j, const std::string& source);
std::unique_ptr<Model> MakeBpeModel(const json& j, const std::string& source);
std::unique_ptr<Model> MakeWordPieceModel(const json& j, const std::string& source);
std::unique_ptr<Model> MakeUnigramModel(const json& j, const std::string& source);
// WordPiece from a vocabulary (vocab.txt).
std::unique_ptr<Model> MakeWordPiece(std::vector<std::string> vocab, const std::string& unk,
                                     const std::string& prefix, size_t max_chars,
                                     const std::string& source);

// Ids and token types of one or two sequences.
struct Encoding {
  std::vector<int64_t> ids;
  std::vector<int32_t> type_ids;
};

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // One or two encodings in; the caller concatenates what comes out
  // (DefaultProcess).
  virtual void Process(std::vector<Encoding>* encodings, bool add_special_tokens) const = 0;
};
// `token_to_id` resolves tokens that a processor names without an id.
std::unique_ptr<PostProcessor> MakePostProcessor(const json& j, const std::string& source);
// [CLS] A [SEP] (B [SEP]) with token types 0 / 1.
std::unique_ptr<PostProcessor> MakeBertProcessing(int64_t cls, int64_t sep);
// The default when there is no post-processor: types 0 for A, 1 for B.
void DefaultProcess(std::vector<Encoding>* encodings);

class Decoder {
 public:
  virtual ~Decoder() = default;
  // decode_chain: tokens in, tokens out (joined by the caller).
  virtual void DecodeChain(std::vector<std::string>* tokens) const = 0;
};
std::unique_ptr<Decoder> MakeDecoder(const json& j, const std::string& source);
std::unique_ptr<Decoder> MakeWordPieceDecoder(const std::string& prefix, bool cleanup);

// Added tokens: split out of the text before (normalized = false) or after
// (normalized = true) normalization, leftmost-longest, with single_word,
// lstrip and rstrip.
struct AddedToken {
  int64_t id;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

class AddedVocabulary {
 public:
  // `normalizer` (may be null) normalizes the content of normalized tokens.
  void Build(std::vector<AddedToken> tokens, const Normalizer* normalizer);
  struct Split {
    size_t start, end;
    std::optional<int64_t> id;  // set for an added token
  };
  // Splits `text` by the tokens of one kind (normalized or not); special
  // tokens only if `allow_special`.
  std::vector<Split> FindSplits(std::string_view text, bool normalized, bool allow_special) const;
  bool HasMatchable(bool normalized, bool allow_special) const;
  const AddedToken* ById(int64_t id) const;
  const AddedToken* ByContent(const std::string& content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  struct Trie {
    // Node 0 is the root; children as (byte, node) sorted by byte.
    std::vector<std::vector<std::pair<unsigned char, int32_t>>> children{{}};
    std::vector<int32_t> token;  // index into tokens_, or -1
    bool empty() const { return children.size() == 1; }
    void Insert(std::string_view s, int32_t index);
    // Index of the longest token at s[pos..] (its length in *length), or -1.
    int32_t LongestAt(std::string_view s, size_t pos, size_t* length) const;
  };
  std::vector<AddedToken> tokens_;
  std::unordered_map<int64_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Trie tries_[2];  // [normalized]
  bool has_special_[2] = {false, false}, has_plain_[2] = {false, false};
};

// Reads added_tokens (a list of {id, content, special, ...}).
std::vector<AddedToken> ReadAddedTokens(const json& j, const std::string& source);

// The type of a component for messages ("null", or the JSON if untyped).
std::string TypeOf(const json& j);

}  // namespace stip::tokenizer_pipeline
