// Byte-level BPE (GPT-2 family), matching Hugging Face `tokenizers`: the GPT-2
// pre-tokenizer regex (PCRE2, Unicode classes), GPT-2's byte-to-unicode map,
// merges applied lowest rank first (leftmost on ties), and added tokens split
// out before pre-tokenization (special ones only with allow_special).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/tokenizer/tokenizer.h"

namespace stip {

// Special tokens for the vocab.json + merges.txt form (which does not list
// them itself).
struct BpeSpecialTokens {
  struct Added {
    std::optional<int64_t> id;  // unset: the vocabulary's id, or a new one
    std::string content;
    bool special = true;
  };
  std::vector<Added> added;                       // added tokens besides bos/eos/unk/pad
  std::optional<std::string> bos, eos, unk, pad;  // special tokens
  bool add_bos = false;  // Encode prepends bos (GPT2Tokenizer's add_bos_token)
  bool add_eos = false;
  // Tokens above that are missing from the vocabulary get new ids (true) or
  // are ignored (false).
  bool add_missing = true;

  // bos/eos/unk/pad, add_bos_token/add_eos_token and added_tokens_decoder of a
  // tokenizer_config.json.
  static BpeSpecialTokens FromConfigFile(const std::string& tokenizer_config_path);
  // GPT2Tokenizer's defaults: "<|endoftext|>" as bos/eos/unk if the vocabulary
  // has it.
  static BpeSpecialTokens Gpt2Defaults();
  // The given tokens as special added tokens; bos/eos unset.
  static BpeSpecialTokens Special(const std::vector<std::string>& tokens);
};

class BpeTokenizer final : public Tokenizer {
 public:
  // Hugging Face tokenizer.json with model.type "BPE" and a ByteLevel
  // pre-tokenizer (or Split + ByteLevel). `tokenizer_config_path` (optional,
  // "" for none) supplies bos_token/eos_token for bos_id()/eos_id().
  static std::unique_ptr<BpeTokenizer> FromTokenizerJson(
      const std::string& tokenizer_json_path, const std::string& tokenizer_config_path = "");
  // vocab.json (token -> id; GPT-2's encoder.json) and merges.txt (GPT-2's
  // vocab.bpe; a leading "#version" line is skipped).
  static std::unique_ptr<BpeTokenizer> FromVocabAndMerges(const std::string& vocab_json_path,
                                                          const std::string& merges_path,
                                                          const BpeSpecialTokens& specials = {});

  ~BpeTokenizer() override;

  std::vector<int64_t> Encode(std::string_view text,
                              const EncodeOptions& options = {}) const override;
  std::string Decode(const std::vector<int64_t>& ids, bool skip_special = false) const override;

  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_bytes_.size()); }
  std::optional<int64_t> bos_id() const override { return bos_id_; }
  std::optional<int64_t> eos_id() const override { return eos_id_; }
  bool IsSpecial(int64_t id) const override;
  std::string kind() const override { return "bpe"; }

  // The id of a token (byte-level form for model tokens, raw text for added
  // tokens), if any.
  std::optional<int64_t> TokenToId(const std::string& token) const override;

 private:
  struct AddedToken {
    int64_t id;
    std::string content;
    bool special;
    bool lstrip = false;  // the match takes the whitespace on its left
    bool rstrip = false;  // ... and on its right
  };
  struct MergeValue {
    int32_t rank;
    int32_t new_id;
  };

  BpeTokenizer();
  static std::unique_ptr<BpeTokenizer> FromTokenizerJsonImpl(const nlohmann::json& j,
                                                             const std::string& path,
                                                             const std::string& config_path);
  // Builds the merge table, byte tables, added-token index and the regex.
  // `source` names the file(s) for error messages.
  void Finish(const std::vector<std::pair<std::string, std::string>>& merges,
              const std::vector<size_t>& merge_lines, const std::string& source);
  void AddAddedToken(int64_t id, const std::string& content, bool special,
                     const std::string& source, bool lstrip = false, bool rstrip = false);
  void SetPattern(const std::string& pattern, const std::string& source);

  // Appends the ids of a segment without added tokens.
  void EncodeSegment(std::string_view segment, std::vector<int64_t>* ids) const;
  // Appends the ids of one pre-token (raw bytes).
  void EncodeWord(std::string_view word, std::vector<int64_t>* ids) const;
  void MergeWord(std::string_view word, std::vector<int32_t>* out) const;

  // Model vocabulary: token in GPT-2's byte-level alphabet <-> id.
  std::unordered_map<std::string, int32_t> token_to_id_;
  std::vector<std::string> id_to_token_;             // "" for ids without a model token
  std::unordered_map<uint64_t, MergeValue> merges_;  // (left << 32 | right)
  int32_t byte_id_[256];                             // id of each byte's symbol, or -1
  std::optional<int32_t> unk_id_;
  bool ignore_merges_ = false;
  bool add_prefix_space_ = false;

  // Added tokens, by id and for matching (by first byte, longest first).
  std::vector<AddedToken> added_;
  std::unordered_map<int64_t, size_t> added_by_id_;
  std::unordered_map<std::string, size_t> added_by_content_;
  std::vector<std::vector<size_t>> added_by_first_byte_;  // 256 lists
  bool has_non_special_added_ = false;

  // Decoded bytes of every id (model tokens through the inverse byte map,
  // added tokens verbatim); `id_valid_` marks ids that exist.
  std::vector<std::string> id_to_bytes_;
  std::vector<bool> id_valid_;
  std::vector<bool> id_special_;

  std::vector<int64_t> prefix_ids_, suffix_ids_;  // added by add_special_tokens
  std::optional<int64_t> bos_id_, eos_id_;

  // Pre-tokenizer: PCRE2 code (pcre2_code_8*), or null for "no split".
  void* regex_ = nullptr;
  std::string pattern_;

  // Cache of merged words (raw bytes -> ids).
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace stip
