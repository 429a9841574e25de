// Tokenizers of Hugging Face model directories. Torch-free.
//
//  - Byte-level BPE (GPT-2 family): `tokenizer.json` (model.type == "BPE" with
//    a ByteLevel pre-tokenizer) or `vocab.json` + `merges.txt`, with the exact
//    GPT-2 pre-tokenizer regex (PCRE2 with Unicode classes) and added/special
//    tokens.
//  - SentencePiece (LLaMA family): `tokenizer.model` through libsentencepiece,
//    with BOS/EOS rules from `tokenizer_config.json` (add_bos_token, default
//    true; add_eos_token, default false).
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

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Loads whichever tokenizer the directory holds (tokenizer.json, vocab.json +
  // merges.txt, or tokenizer.model). Throws stip::Error naming the missing or
  // malformed file.
  static std::unique_ptr<Tokenizer> FromDirectory(const std::string& dir);

  virtual std::vector<int64_t> Encode(std::string_view text,
                                      const EncodeOptions& options = {}) const = 0;
  // Decodes to bytes (may end inside a UTF-8 character if `ids` does).
  // `skip_special` drops special tokens (BOS/EOS/added special tokens).
  virtual std::string Decode(const std::vector<int64_t>& ids, bool skip_special = false) const = 0;

  virtual int64_t vocab_size() const = 0;
  virtual std::optional<int64_t> bos_id() const = 0;
  virtual std::optional<int64_t> eos_id() const = 0;
  virtual bool IsSpecial(int64_t id) const = 0;
  // "bpe" or "sentencepiece".
  virtual std::string kind() const = 0;
};

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
