// The WordPiece model (pipeline.h), as Hugging Face's models::wordpiece:
// greedy longest match first, continuation pieces with the prefix ("##"), a
// word with an unmatchable part or over max_input_chars_per_word characters
// becomes unk_token.
#include <mutex>

#include "common/error.h"
#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/unicode.h"

namespace stip::tokenizer_pipeline {
namespace {

constexpr int64_t kMaxTokenId = int64_t{1} << 24;
constexpr size_t kCacheCapacity = 10000;  // words
constexpr size_t kMaxCachedWord = 64;     // bytes

class WordPiece final : public Model {
 public:
  WordPiece(std::vector<std::string> id_to_token, std::string unk, std::string prefix,
            size_t max_chars, const std::string& source)
      : id_to_token_(std::move(id_to_token)),
        unk_(std::move(unk)),
        prefix_(std::move(prefix)),
        max_chars_(max_chars) {
    token_to_id_.reserve(id_to_token_.size());
    for (size_t i = 0; i < id_to_token_.size(); ++i) {
      if (!id_to_token_[i].empty()) token_to_id_.emplace(id_to_token_[i], static_cast<int32_t>(i));
    }
    if (!token_to_id_.count(unk_)) {
      throw InvalidArgument(source + ": WordPiece unk_token \"" + unk_ +
                            "\" is not in the vocabulary");
    }
    unk_id_ = token_to_id_[unk_];
  }

  void Tokenize(const Piece& in, std::vector<int64_t>* ids) const override {
    Piece piece = in;
    Materialize(&piece);
    const std::string& w = piece.text;
    if (w.empty()) return;
    // (Words repeat: a cache of their pieces, as the BPE model has.)
    const bool cacheable = w.size() <= kMaxCachedWord;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(w);
      if (it != cache_.end()) {
        ids->insert(ids->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const size_t mark = ids->size();
    TokenizeWord(w, ids);
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (cache_.size() < kCacheCapacity) {
        cache_.emplace(w, std::vector<int64_t>(ids->begin() + mark, ids->end()));
      }
    }
  }

  void TokenizeWord(const std::string& w, std::vector<int64_t>* ids) const {
    size_t chars = 0;
    for (size_t i = 0; i < w.size(); i += unicode::CharLength(static_cast<unsigned char>(w[i]))) {
      ++chars;
    }
    if (chars > max_chars_) {
      ids->push_back(unk_id_);
      return;
    }
    const size_t mark = ids->size();
    size_t start = 0;
    std::string sub;
    while (start < w.size()) {
      size_t end = w.size();
      int32_t found = -1;
      while (start < end) {
        sub.clear();
        if (start > 0) sub += prefix_;
        sub.append(w, start, end - start);
        auto it = token_to_id_.find(sub);
        if (it != token_to_id_.end()) {
          found = it->second;
          break;
        }
        // Back off one character.
        do {
          --end;
        } while (end > start && (static_cast<unsigned char>(w[end]) & 0xC0) == 0x80);
      }
      if (found < 0) {
        ids->resize(mark);
        ids->push_back(unk_id_);
        return;
      }
      ids->push_back(found);
      start = end;
    }
  }

  std::optional<int64_t> TokenToId(const std::string& token) const override {
    auto it = token_to_id_.find(token);
    if (it == token_to_id_.end()) return std::nullopt;
    return it->second;
  }
  const std::string* IdToToken(int64_t id) const override {
    if (id < 0 || id >= static_cast<int64_t>(id_to_token_.size()) || id_to_token_[id].empty()) {
      return nullptr;
    }
    return &id_to_token_[id];
  }
  int64_t size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::string kind() const override { return "wordpiece"; }

 private:
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int32_t> token_to_id_;
  std::string unk_, prefix_;
  size_t max_chars_;
  int32_t unk_id_ = 0;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache_;
};

}  // namespace

std::unique_ptr<Model> MakeWordPiece(std::vector<std::string> vocab, const std::string& unk,
                                     const std::string& prefix, size_t max_chars,
                                     const std::string& source) {
  return std::make_unique<WordPiece>(std::move(vocab), unk, prefix, max_chars, source);
}

std::unique_ptr<Model> MakeWordPieceModel(const json& j, const std::string& source) {
  const std::string where = source + ": model (WordPiece)";
  if (!j.contains("vocab") || !j["vocab"].is_object()) {
    throw InvalidArgument(where + ": \"vocab\" must be an object");
  }
  std::vector<std::string> vocab;
  for (const auto& [token, value] : j["vocab"].items()) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() >= kMaxTokenId) {
      throw InvalidArgument(where + ": the id of token \"" + token +
                            "\" is not an integer in [0, " + std::to_string(kMaxTokenId) + ")");
    }
    const auto id = value.get<size_t>();
    if (token.empty()) throw InvalidArgument(where + ": empty token in the vocabulary");
    if (id >= vocab.size()) vocab.resize(id + 1);
    vocab[id] = token;
  }
  return MakeWordPiece(std::move(vocab), j.value("unk_token", std::string("[UNK]")),
                       j.value("continuing_subword_prefix", std::string("##")),
                       j.value("max_input_chars_per_word", size_t{100}), where);
}

}  // namespace stip::tokenizer_pipeline
