#include "common/tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>

#include "common/error.h"
#include "common/tokenizer/internal.h"

namespace stip {
namespace {

namespace ti = tokenizer_internal;

constexpr char kSpaceSymbol[] = "\xE2\x96\x81";  // U+2581, sentencepiece's space

// The byte of a byte-fallback piece "<0xAB>", or -1.
int ParseBytePiece(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int value = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = piece[i];
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer()
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::FromFile(
    const std::string& model_path, const std::string& config_path) {
  if (!ti::FileExists(model_path)) throw NotFound("cannot open " + model_path);
  std::unique_ptr<SentencePieceTokenizer> tok(new SentencePieceTokenizer());
  tok->path_ = model_path;
  // Load from memory, so that an unreadable file and a corrupt one are told
  // apart.
  const std::string bytes = ti::ReadFile(model_path);
  const auto status = tok->sp_->LoadFromSerializedProto(bytes);
  if (!status.ok()) {
    throw InvalidArgument(model_path + ": not a valid SentencePiece model: " + status.ToString());
  }
  tok->vocab_size_ = tok->sp_->GetPieceSize();
  if (tok->vocab_size_ <= 0) throw InvalidArgument(model_path + ": SentencePiece model is empty");

  ti::TokenizerConfig config;
  if (!config_path.empty()) config = ti::ReadTokenizerConfig(config_path);
  tok->add_bos_ = config.add_bos_token.value_or(true);
  tok->add_eos_ = config.add_eos_token.value_or(false);

  auto resolve = [&](const std::optional<std::string>& token, int fallback) {
    std::optional<int64_t> id;
    if (token) {
      const int i = tok->sp_->PieceToId(*token);
      if (i >= 0 && i < tok->vocab_size_ && tok->sp_->IdToPiece(i) == *token) id = i;
    }
    if (!id && fallback >= 0 && fallback < tok->vocab_size_) id = fallback;
    return id;
  };
  tok->bos_id_ = resolve(config.bos_token, tok->sp_->bos_id());
  tok->eos_id_ = resolve(config.eos_token, tok->sp_->eos_id());

  tok->special_.assign(tok->vocab_size_, false);
  tok->byte_of_.assign(tok->vocab_size_, -1);
  for (int id = 0; id < tok->vocab_size_; ++id) {
    const std::string& piece = tok->sp_->IdToPiece(id);
    const bool control = tok->sp_->IsControl(id);
    tok->special_[id] = control || id == tok->bos_id_ || id == tok->eos_id_;
    if (tok->sp_->IsByte(id)) tok->byte_of_[id] = static_cast<int16_t>(ParseBytePiece(piece));
    if ((tok->special_[id] || tok->sp_->IsUnknown(id)) && !piece.empty()) {
      tok->special_texts_.emplace_back(piece, id);
    }
  }
  std::stable_sort(tok->special_texts_.begin(), tok->special_texts_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  return tok;
}

void SentencePieceTokenizer::EncodeText(std::string_view text, std::vector<int64_t>* ids) const {
  if (text.empty()) return;
  std::vector<int> out;
  const auto status = sp_->Encode(text, &out);
  if (!status.ok()) {
    throw InvalidArgument(path_ + ": cannot encode text: " + status.ToString());
  }
  ids->insert(ids->end(), out.begin(), out.end());
}

std::vector<int64_t> SentencePieceTokenizer::Encode(std::string_view text,
                                                    const EncodeOptions& options) const {
  ti::CheckUtf8(text, "text to encode");
  std::vector<int64_t> ids;
  if (options.add_special_tokens && add_bos_ && bos_id_) ids.push_back(*bos_id_);
  if (!options.allow_special) {
    EncodeText(text, &ids);
  } else {
    size_t segment = 0, pos = 0;
    while (pos < text.size()) {
      const std::pair<std::string, int>* found = nullptr;
      for (const auto& st : special_texts_) {
        if (text.compare(pos, st.first.size(), st.first) == 0) {
          found = &st;
          break;
        }
      }
      if (!found) {
        ++pos;
        continue;
      }
      EncodeText(text.substr(segment, pos - segment), &ids);
      ids.push_back(found->second);
      pos += found->first.size();
      segment = pos;
    }
    EncodeText(text.substr(segment), &ids);
  }
  if (options.add_special_tokens && add_eos_ && eos_id_) ids.push_back(*eos_id_);
  return ids;
}

std::string SentencePieceTokenizer::DecodeRun(const std::vector<int>& ids, bool after_text) const {
  if (ids.empty()) return "";
  // Hold back a trailing unfinished character made of byte pieces:
  // sentencepiece would turn its bytes into U+FFFD.
  size_t first_byte = ids.size();
  while (first_byte > 0 && byte_of_[ids[first_byte - 1]] >= 0) --first_byte;
  std::string tail;
  for (size_t i = first_byte; i < ids.size(); ++i)
    tail.push_back(static_cast<char>(byte_of_[ids[i]]));
  const size_t complete = CompleteUtf8Prefix(tail);
  const size_t head_size = first_byte + complete;
  tail.erase(0, complete);

  std::string text;
  if (head_size > 0) {
    const std::vector<int> head(ids.begin(), ids.begin() + head_size);
    const auto status = sp_->Decode(head, &text);
    if (!status.ok()) {
      throw InvalidArgument(path_ + ": cannot decode ids: " + status.ToString());
    }
    if (after_text && (text.empty() || text[0] != ' ') &&
        sp_->IdToPiece(head[0]).rfind(kSpaceSymbol, 0) == 0) {
      text.insert(0, " ");
    }
  }
  return text + tail;
}

std::string SentencePieceTokenizer::Decode(const std::vector<int64_t>& ids,
                                           bool skip_special) const {
  std::string out;
  std::vector<int> run;
  bool after_text = false;  // some text (a special token's) precedes `run`
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      throw InvalidArgument("cannot decode unknown token id " + std::to_string(id) +
                            " (vocabulary size " + std::to_string(vocab_size_) + ")");
    }
    if (!special_[id]) {
      run.push_back(static_cast<int>(id));
      continue;
    }
    if (skip_special) continue;
    out += DecodeRun(run, after_text);
    run.clear();
    out += sp_->IdToPiece(static_cast<int>(id));
    after_text = true;
  }
  out += DecodeRun(run, after_text);
  return out;
}

bool SentencePieceTokenizer::IsSpecial(int64_t id) const {
  return id >= 0 && id < vocab_size_ && special_[id];
}

}  // namespace stip
