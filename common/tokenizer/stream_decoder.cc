#include <exception>

#include "common/tokenizer/internal.h"
#include "common/tokenizer/tokenizer.h"

namespace stip {
namespace {

// The window of ids decoded on each Push: once it holds kMaxIds ids and all
// of its text has been returned, it is cut down to its last kKeepIds (up to
// kMaxKeepIds) ids, which give the next tokens their context (SentencePiece drops the leading
// space of the first piece of a text, so a window must not start with a new
// token).
constexpr size_t kMaxIds = 32;
constexpr size_t kKeepIds = 8;
constexpr size_t kMaxKeepIds = 24;

}  // namespace

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::Push(int64_t id) {
  ids_.push_back(id);
  std::string text;
  try {
    text = tokenizer_.Decode(ids_, skip_special_);
  } catch (...) {
    ids_.pop_back();  // an unknown id leaves the decoder as it was
    throw;
  }
  // Decoding a longer window only appends text; `emitted_` bytes are out.
  if (text.size() < emitted_) emitted_ = text.size();
  const std::string_view rest = std::string_view(text).substr(emitted_);
  const size_t complete = CompleteUtf8Prefix(rest);
  std::string out = tokenizer_internal::SanitizeUtf8(rest.substr(0, complete));
  emitted_ += complete;

  if (ids_.size() >= kMaxIds && emitted_ == text.size()) {
    // Cut where the kept ids decode to (non-empty) text that ends what was
    // decoded, so that later tokens see the same context: not inside a
    // character made of several byte tokens, for example.
    for (size_t keep = kKeepIds; keep <= kMaxKeepIds && keep < ids_.size(); ++keep) {
      std::vector<int64_t> tail(ids_.end() - keep, ids_.end());
      const std::string tail_text = tokenizer_.Decode(tail, skip_special_);
      if (!tail_text.empty() && tail_text.size() <= text.size() &&
          text.compare(text.size() - tail_text.size(), tail_text.size(), tail_text) == 0) {
        ids_ = std::move(tail);
        emitted_ = tail_text.size();
        break;
      }
    }
  }
  return out;
}

std::string StreamDecoder::Flush() {
  const std::string text = tokenizer_.Decode(ids_, skip_special_);
  if (text.size() < emitted_) emitted_ = text.size();
  std::string out = tokenizer_internal::SanitizeUtf8(std::string_view(text).substr(emitted_));
  emitted_ = text.size();
  return out;
}

void StreamDecoder::Reset() {
  ids_.clear();
  emitted_ = 0;
}

}  // namespace stip
