// Tokenizers of Hugging Face model directories. Torch-free.
//
//  - `tokenizer.json`: the pipeline of Hugging Face `tokenizers` (normalizers,
//    pre-tokenizers, BPE / WordPiece / Unigram, post-processors, decoders,
//    added tokens), common/tokenizer/hf_tokenizer.h and pipeline.h.
//  - `vocab.txt` (BERT's classic layout): WordPiece with BertTokenizer's
//    options from `tokenizer_config.json`.
//  - Byte-level BPE from `vocab.json` + `merges.txt` (GPT-2 family),
//    bpe_tokenizer.h.
//  - SentencePiece (LLaMA family): `tokenizer.model` through libsentencepiece,
//    with BOS/EOS rules from `tokenizer_config.json` (add_bos_token, default
//    true; add_eos_token, default false).
// docs/tokenizers.md has the details.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stip {

struct EncodeOptions {
  // Text that spells a special token (e.g. "<|endoftext|>") is plain text
  // unless this is set: users cannot inject control tokens by typing them.
  bool allow_special = false;
  // Prepend BOS / append EOS where the tokenizer's config says so.
  bool add_special_tokens = true;
};

// Ids of one sequence or a pair, with token type ids (0 for the first
// sequence's part, 1 for the second's, as the post-processor sets them).
struct TokenizedPair {
  std::vector<int64_t> ids;
  std::vector<int32_t> type_ids;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads whichever tokenizer the directory holds (tokenizer.json, vocab.json +
  // merges.txt, or tokenizer.model). Throws stip::Error naming the missing or
  // malformed file.
  static std::unique_ptr<Tokenizer> FromDirectory(const std::string& dir);

  virtual std::vector<int64_t> Encode(std::string_view text,
                                      const EncodeOptions& options = {}) const = 0;
  // One sequence (b unset) or a pair, e.g. BERT's [CLS] a [SEP] b [SEP] with
  // type ids 0...0 1...1. The default concatenates Encode(a) and Encode(b)
  // (types 0 and 1).
  virtual TokenizedPair EncodePair(std::string_view a, std::optional<std::string_view> b,
                                   const EncodeOptions& options = {}) const {
    TokenizedPair out;
    out.ids = Encode(a, options);
    out.type_ids.assign(out.ids.size(), 0);
    if (b) {
      const std::vector<int64_t> more = Encode(*b, options);
      out.ids.insert(out.ids.end(), more.begin(), more.end());
      out.type_ids.resize(out.ids.size(), 1);
    }
    return out;
  }
  // Decodes to bytes (may end inside a UTF-8 character if `ids` does).
  // `skip_special` drops special tokens (BOS/EOS/added special tokens).
  virtual std::string Decode(const std::vector<int64_t>& ids, bool skip_special = false) const = 0;

  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> bos_id() const = 0;
  virtual std::optional<int64_t> eos_id() const = 0;
  virtual bool IsSpecial(int64_t id) const = 0;
  // "bpe", "wordpiece", "unigram" or "sentencepiece".
  virtual std::string kind() const = 0;
  // The id of a token (an added token's text, or a model token as the model
  // spells it, e.g. "\u0120the" in byte-level BPE), if any.
  virtual std::optional<int64_t> TokenToId(const std::string& /*token*/) const {
    return std::nullopt;
  }
  // The id of a named special token: "bos", "eos", "unk", "pad", "cls",
  // "sep", "mask" (from tokenizer_config.json), if the tokenizer has it.
  virtual std::optional<int64_t> SpecialTokenId(std::string_view role) const {
    if (role == "bos") return bos_id();
    if (role == "eos") return eos_id();
    return std::nullopt;
  }
};

// Positions of `id` in `ids` (e.g. where the [MASK] tokens are).
std::vector<size_t> PositionsOf(const std::vector<int64_t>& ids, int64_t id);

// SentencePiece `tokenizer.model` (+ optional tokenizer_config.json, "" for
// none). libsentencepiece carries its own copy of protobuf, which clashes with
// the protobuf that LibTorch and gRPC load; it therefore lives in a module of
// its own (libstip_sentencepiece.so) loaded with RTLD_LOCAL | RTLD_DEEPBIND on
// first use (common/tokenizer/sentencepiece_loader.cc).
std::unique_ptr<Tokenizer> LoadSentencePieceTokenizer(const std::string& model_path,
                                                      const std::string& config_path = "");

// Incremental detokenizer: feed ids one by one, get the text that became
// complete. Never returns half a UTF-8 character; an invalid sequence is
// emitted as U+FFFD once it can no longer become valid. Handles tokenizers
// whose decoding of a token depends on its neighbours (SentencePiece's leading
// space) by decoding a sliding window.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true);
  // Returns newly completed text (possibly empty).
  std::string Push(int64_t id);
  // Returns whatever is left (incomplete UTF-8 becomes U+FFFD).
  std::string Flush();
  void Reset();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int64_t> ids_;
  size_t emitted_ = 0;  // bytes of Decode(ids_) already returned
};

// Length in bytes of the longest prefix of `s` that is complete UTF-8 (an
// invalid byte counts as complete, so that it is not held back forever).
size_t CompleteUtf8Prefix(std::string_view s);

}  // namespace stip
