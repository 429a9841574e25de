// Added tokens of tokenizer.json (pipeline.h), as Hugging Face's
// AddedVocabulary: tokens with normalized = false are split out of the raw
// text, those with normalized = true out of the normalized text (their
// content normalized too); leftmost-longest matching, then single_word,
// lstrip and rstrip. A special token is matched only when the caller allows
// special tokens (otherwise the text that spells it stays plain text).
#include <algorithm>

#include "common/error.h"
#include "common/tokenizer/internal.h"
#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/unicode.h"

namespace stip::tokenizer_pipeline {
namespace {

constexpr int64_t kMaxTokenId = int64_t{1} << 24;

// The regex crate's Unicode \w.
bool IsWordChar(uint32_t c) {
  if (c < 0x80) return (c | 32) - 'a' < 26 || (c >= '0' && c <= '9') || c == '_';
  return unicode::IsAlphabetic(c) || unicode::IsMark(c) || unicode::IsNumeric(c) || c == 0x200C ||
         c == 0x200D;  // (Nd checked loosely as N; Pc below)
}

// The start of the last character of s[0, end).
size_t PrevChar(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

bool EndsWithWord(std::string_view s, size_t end) {
  if (end == 0) return false;
  size_t i = PrevChar(s, end);
  return IsWordChar(unicode::Next(s, &i));
}

bool StartsWithWord(std::string_view s, size_t start) {
  if (start >= s.size()) return false;
  size_t i = start;
  return IsWordChar(unicode::Next(s, &i));
}

}  // namespace

void AddedVocabulary::Trie::Insert(std::string_view s, int32_t index) {
  int32_t node = 0;
  for (unsigned char b : s) {
    auto& kids = children[node];
    auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(b, int32_t{-1}));
    if (it != kids.end() && it->first == b) {
      node = it->second;
      continue;
    }
    const auto next = static_cast<int32_t>(children.size());
    kids.insert(it, {b, next});
    children.emplace_back();
    node = next;
  }
  if (token.size() < children.size()) token.resize(children.size(), -1);
  if (token[node] < 0) token[node] = index;
}

int32_t AddedVocabulary::Trie::LongestAt(std::string_view s, size_t pos, size_t* length) const {
  int32_t node = 0, found = -1;
  for (size_t i = pos; i < s.size(); ++i) {
    const auto& kids = children[node];
    const auto b = static_cast<unsigned char>(s[i]);
    auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(b, int32_t{-1}));
    if (it == kids.end() || it->first != b) break;
    node = it->second;
    if (static_cast<size_t>(node) < token.size() && token[node] >= 0) {
      found = token[node];
      *length = i + 1 - pos;
    }
  }
  return found;
}

void AddedVocabulary::Build(std::vector<AddedToken> tokens, const Normalizer* normalizer) {
  tokens_ = std::move(tokens);
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    by_id_[t.id] = i;
    by_content_.emplace(t.content, i);
    std::string pattern = t.content;
    if (t.normalized && normalizer) normalizer->Normalize(&pattern);
    if (pattern.empty()) continue;
    const int k = t.normalized ? 1 : 0;
    tries_[k].Insert(pattern, static_cast<int32_t>(i));
    (t.special ? has_special_[k] : has_plain_[k]) = true;
  }
}

bool AddedVocabulary::HasMatchable(bool normalized, bool allow_special) const {
  const int k = normalized ? 1 : 0;
  return has_plain_[k] || (allow_special && has_special_[k]);
}

const AddedToken* AddedVocabulary::ById(int64_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::ByContent(const std::string& content) const {
  auto it = by_content_.find(content);
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

std::vector<AddedVocabulary::Split> AddedVocabulary::FindSplits(std::string_view text,
                                                                bool normalized,
                                                                bool allow_special) const {
  std::vector<Split> splits;
  const Trie& trie = tries_[normalized ? 1 : 0];
  size_t start_offset = 0, pos = 0;
  while (pos < text.size()) {
    size_t length = 0;
    const int32_t index = trie.LongestAt(text, pos, &length);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& t = tokens_[index];
    size_t start = pos, stop = pos + length;
    pos = stop;
    if (t.special && !allow_special) continue;
    if (t.single_word && (EndsWithWord(text, start) || StartsWithWord(text, stop))) continue;
    if (t.lstrip) {
      size_t s = start;
      while (s > start_offset) {
        const size_t p = PrevChar(text, s);
        size_t q = p;
        if (!unicode::IsWhitespace(unicode::Next(text, &q))) break;
        s = p;
      }
      start = s;
    }
    if (t.rstrip) {
      while (stop < text.size()) {
        size_t q = stop;
        if (!unicode::IsWhitespace(unicode::Next(text, &q))) break;
        stop = q;
      }
      pos = stop;
    }
    if (start_offset < start) splits.push_back({start_offset, start, std::nullopt});
    splits.push_back({start, stop, t.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) splits.push_back({start_offset, text.size(), std::nullopt});
  return splits;
}

std::vector<AddedToken> ReadAddedTokens(const json& j, const std::string& source) {
  std::vector<AddedToken> out;
  if (j.is_null()) return out;
  if (!j.is_array()) throw InvalidArgument(source + ": added_tokens must be an array");
  for (const json& a : j) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
        !a.contains("content") || !a["content"].is_string()) {
      throw InvalidArgument(source + ": malformed added token " + a.dump());
    }
    AddedToken t;
    t.id = a["id"].get<int64_t>();
    t.content = a["content"].get<std::string>();
    if (t.id < 0 || t.id >= kMaxTokenId) {
      throw InvalidArgument(source + ": added token \"" + t.content + "\" has invalid id " +
                            std::to_string(t.id));
    }
    if (t.content.empty()) {
      throw InvalidArgument(source + ": added token " + std::to_string(t.id) + " is empty");
    }
    tokenizer_internal::CheckUtf8(t.content, source + ": added token " + std::to_string(t.id));
    auto flag = [&](const char* key, bool dflt) {
      auto it = a.find(key);
      if (it == a.end() || it->is_null()) return dflt;
      if (!it->is_boolean()) {
        throw InvalidArgument(source + ": added token " + std::to_string(t.id) + ": \"" + key +
                              "\" must be true or false");
      }
      return it->get<bool>();
    };
    t.special = flag("special", false);
    t.single_word = flag("single_word", false);
    t.lstrip = flag("lstrip", false);
    t.rstrip = flag("rstrip", false);
    t.normalized = flag("normalized", !t.special);
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace stip::tokenizer_pipeline
