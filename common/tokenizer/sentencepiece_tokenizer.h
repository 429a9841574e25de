// SentencePiece tokenizers (LLaMA family) through libsentencepiece, with the
// BOS/EOS rules of Hugging Face's tokenizer_config.json (add_bos_token,
// default true; add_eos_token, default false).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/tokenizer/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace stip {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // `tokenizer_config_path` is optional ("" for none).
  static std::unique_ptr<SentencePieceTokenizer> FromFile(
      const std::string& model_path, const std::string& tokenizer_config_path = "");
  ~SentencePieceTokenizer() override;

  // Special-token text in `text` (e.g. "<s>") is plain text unless
  // options.allow_special; then control pieces and "<unk>" are split out and
  // the parts between them are encoded separately (Hugging Face's legacy
  // LLaMA behaviour).
  std::vector<int64_t> Encode(std::string_view text,
                              const EncodeOptions& options = {}) const override;
  // As sentencepiece's Decode, except that an unfinished UTF-8 character made
  // of byte-fallback pieces at the end is returned as its bytes (sentencepiece
  // would return U+FFFD), and that without skip_special the special tokens
  // are written out as their text.
  std::string Decode(const std::vector<int64_t>& ids, bool skip_special = false) const override;

  int64_t vocab_size() const override { return vocab_size_; }
  std::optional<int64_t> bos_id() const override { return bos_id_; }
  std::optional<int64_t> eos_id() const override { return eos_id_; }
  // Control pieces (<s>, </s>, ...) and the bos/eos ids.
  bool IsSpecial(int64_t id) const override;
  std::string kind() const override { return "sentencepiece"; }

 private:
  SentencePieceTokenizer();
  void EncodeText(std::string_view text, std::vector<int64_t>* ids) const;
  // Decodes ids without special tokens; `after_text` keeps the leading space
  // of the first piece that sentencepiece drops at the start of a text.
  std::string DecodeRun(const std::vector<int>& ids, bool after_text) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
  int64_t vocab_size_ = 0;
  std::optional<int64_t> bos_id_, eos_id_;
  bool add_bos_ = true, add_eos_ = false;
  std::vector<bool> special_;     // per id
  std::vector<int16_t> byte_of_;  // per id: the byte of a byte-fallback piece, or -1
  std::vector<std::pair<std::string, int>> special_texts_;  // longest first
};

}  // namespace stip
