// A Hugging Face tokenizer assembled from its pipeline (pipeline.h):
// tokenizer.json with any supported normalizer, pre-tokenizer, model (BPE,
// WordPiece, Unigram), post-processor, decoder and added tokens; or BERT's
// classic layout, vocab.txt + tokenizer_config.json.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/tokenizer.h"

namespace stip {

class HfTokenizer final : public Tokenizer {
 public:
  // `tokenizer_config_path` (optional, "" for none) names bos/eos/unk/pad/
  // cls/sep/mask. Throws Unimplemented naming an unsupported component,
  // InvalidArgument for a malformed file.
  static std::unique_ptr<HfTokenizer> FromTokenizerJson(
      const std::string& tokenizer_json_path, const std::string& tokenizer_config_path = "");
  // The same from JSON text (`source` names it in errors).
  static std::unique_ptr<HfTokenizer> FromTokenizerJsonText(const std::string& text,
                                                            const std::string& source,
                                                            const std::string& config_path = "");
  // vocab.txt (one WordPiece token a line; its line number is its id) with
  // BertTokenizer's options from tokenizer_config.json (do_lower_case,
  // strip_accents, tokenize_chinese_chars, the special tokens), as
  // transformers' BertTokenizerFast builds it.
  static std::unique_ptr<HfTokenizer> FromBertVocab(const std::string& vocab_txt_path,
                                                    const std::string& tokenizer_config_path = "");

  std::vector<int64_t> Encode(std::string_view text,
                              const EncodeOptions& options = {}) const override;
  TokenizedPair EncodePair(std::string_view a, std::optional<std::string_view> b,
                           const EncodeOptions& options = {}) const override;
  std::string Decode(const std::vector<int64_t>& ids, bool skip_special = false) const override;

  int64_t vocab_size() const override { return vocab_size_; }
  std::optional<int64_t> bos_id() const override { return bos_id_; }
  std::optional<int64_t> eos_id() const override { return eos_id_; }
  bool IsSpecial(int64_t id) const override;
  std::string kind() const override { return model_->kind(); }
  std::optional<int64_t> TokenToId(const std::string& token) const override;
  std::optional<int64_t> SpecialTokenId(std::string_view role) const override;

 private:
  HfTokenizer() = default;
  void Finish(const std::string& config_path);
  bool IdValid(int64_t id) const;
  // The ids of one sequence, before post-processing.
  void EncodeSequence(std::string_view text, bool allow_special, std::vector<int64_t>* ids) const;

  std::unique_ptr<tokenizer_pipeline::Normalizer> normalizer_;
  std::unique_ptr<tokenizer_pipeline::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tokenizer_pipeline::Model> model_;
  std::unique_ptr<tokenizer_pipeline::PostProcessor> post_processor_;
  std::unique_ptr<tokenizer_pipeline::Decoder> decoder_;
  tokenizer_pipeline::AddedVocabulary added_;
  int64_t vocab_size_ = 0;
  std::optional<int64_t> bos_id_, eos_id_;
  std::map<std::string, int64_t, std::less<>> special_roles_;  // "cls" -> id, ...
};

}  // namespace stip
