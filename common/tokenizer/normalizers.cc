// Normalizers of tokenizer.json (pipeline.h): NFC, NFD, NFKC, NFKD,
// Lowercase, Strip, StripAccents, Replace, Prepend, BertNormalizer, Sequence,
// and Precompiled when its character map is empty. Unicode from ICU.
#include "common/error.h"
#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/unicode.h"

namespace stip::tokenizer_pipeline {
namespace {

// Applies `f(code_point, out)` to each character.
template <typename F>
std::string MapChars(std::string_view s, F&& f) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const uint32_t c = unicode::Next(s, &i);
    f(c, &out);
  }
  return out;
}

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(unicode::Form form) : form_(form) {}
  void Normalize(std::string* text) const override { *text = unicode::Normalize(*text, form_); }

 private:
  unicode::Form form_;
};

class Lowercase final : public Normalizer {
 public:
  void Normalize(std::string* text) const override { *text = unicode::Lowercase(*text); }
};

class Strip final : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(std::string* text) const override {
    const std::string& s = *text;
    size_t begin = 0, end = s.size();
    if (left_) {
      size_t i = 0;
      while (i < s.size()) {
        size_t j = i;
        if (!unicode::IsWhitespace(unicode::Next(s, &j))) break;
        i = j;
      }
      begin = i;
    }
    if (right_) {
      size_t i = begin;
      end = begin;
      while (i < s.size()) {
        if (!unicode::IsWhitespace(unicode::Next(s, &i))) end = i;
      }
    }
    if (end < begin) end = begin;
    *text = s.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

std::string StripMarks(std::string_view s) {
  return MapChars(s, [](uint32_t c, std::string* out) {
    if (!unicode::IsMark(c)) unicode::Append(c, out);
  });
}

class StripAccents final : public Normalizer {
 public:
  // (Hugging Face removes combining marks without decomposing first; files
  // pair it with NFD/NFKD.)
  void Normalize(std::string* text) const override { *text = StripMarks(*text); }
};

class Replace final : public Normalizer {
 public:
  Replace(const json& pattern, std::string content, const std::string& source)
      : pattern_(pattern, source), content_(std::move(content)) {}
  void Normalize(std::string* text) const override { *text = pattern_.ReplaceAll(*text, content_); }

 private:
  Pattern pattern_;
  std::string content_;
};

class Prepend final : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  void Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class BertNormalizer final : public Normalizer {
 public:
  BertNormalizer(bool clean_text, bool chinese, bool strip_accents, bool lowercase)
      : clean_text_(clean_text),
        chinese_(chinese),
        strip_accents_(strip_accents),
        lowercase_(lowercase) {}
  void Normalize(std::string* text) const override {
    if (clean_text_) {
      *text = MapChars(*text, [](uint32_t c, std::string* out) {
        const bool tab_or_newline = c == '\t' || c == '\n' || c == '\r';
        const bool control = !tab_or_newline && unicode::IsOther(c);
        if (c == 0 || c == 0xFFFD || control) return;
        if (tab_or_newline || unicode::IsWhitespace(c)) {
          out->push_back(' ');
        } else {
          unicode::Append(c, out);
        }
      });
    }
    if (chinese_) {
      *text = MapChars(*text, [](uint32_t c, std::string* out) {
        if (unicode::IsChineseChar(c)) {
          out->push_back(' ');
          unicode::Append(c, out);
          out->push_back(' ');
        } else {
          unicode::Append(c, out);
        }
      });
    }
    if (strip_accents_) *text = StripMarks(unicode::Normalize(*text, unicode::Form::kNFD));
    if (lowercase_) *text = unicode::Lowercase(*text);
  }

 private:
  bool clean_text_, chinese_, strip_accents_, lowercase_;
};

class Sequence final : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void Normalize(std::string* text) const override {
    for (const auto& p : parts_) p->Normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class Identity final : public Normalizer {
 public:
  void Normalize(std::string*) const override {}
};

}  // namespace

std::unique_ptr<Normalizer> MakeBertNormalizer(bool clean_text, bool handle_chinese_chars,
                                               std::optional<bool> strip_accents, bool lowercase) {
  return std::make_unique<BertNormalizer>(clean_text, handle_chinese_chars,
                                          strip_accents.value_or(lowercase), lowercase);
}

std::unique_ptr<Normalizer> MakeNormalizer(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  const std::string type = TypeOf(j);
  const std::string where = source + ": normalizer " + type;
  if (!j.is_object()) throw InvalidArgument(where + ": expected an object");
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(unicode::Form::kNFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(unicode::Form::kNFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(unicode::Form::kNFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(unicode::Form::kNFKD);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "Strip") {
    return std::make_unique<Strip>(j.value("strip_left", true), j.value("strip_right", true));
  }
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Replace") {
    if (!j.contains("pattern") || !j.contains("content") || !j["content"].is_string()) {
      throw InvalidArgument(where + " needs \"pattern\" and a string \"content\"");
    }
    return std::make_unique<Replace>(j["pattern"], j["content"].get<std::string>(), where);
  }
  if (type == "Prepend") {
    if (!j.contains("prepend") || !j["prepend"].is_string()) {
      throw InvalidArgument(where + " needs a string \"prepend\"");
    }
    return std::make_unique<Prepend>(j["prepend"].get<std::string>());
  }
  if (type == "BertNormalizer") {
    std::optional<bool> strip;
    if (j.contains("strip_accents") && !j["strip_accents"].is_null()) {
      strip = j["strip_accents"].get<bool>();
    }
    return MakeBertNormalizer(j.value("clean_text", true), j.value("handle_chinese_chars", true),
                              strip, j.value("lowercase", true));
  }
  if (type == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array()) {
      throw InvalidArgument(where + " needs a \"normalizers\" array");
    }
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (const json& n : j["normalizers"]) {
      auto p = MakeNormalizer(n, source);
      if (p) parts.push_back(std::move(p));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  if (type == "Precompiled") {
    // SentencePiece's compiled character map; an empty one changes nothing.
    const json map = j.value("precompiled_charsmap", json());
    if (map.is_null() || (map.is_string() && map.get<std::string>().empty())) {
      return std::make_unique<Identity>();
    }
    throw Unimplemented(where + " with a non-empty precompiled_charsmap is not supported");
  }
  throw Unimplemented(where + " is not supported");
}

}  // namespace stip::tokenizer_pipeline
