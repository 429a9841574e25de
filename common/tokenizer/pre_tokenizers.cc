// Pre-tokenizers of tokenizer.json (pipeline.h): ByteLevel, Split, Metaspace,
// Whitespace, WhitespaceSplit, Punctuation, Digits, BertPreTokenizer,
// CharDelimiterSplit, Sequence. Splitting follows Hugging Face's
// NormalizedString::split: the pattern's matches and gaps cover the text, and
// the behaviour decides what is kept and what is merged.
#include <algorithm>
#include <functional>

#include "common/error.h"
#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/unicode.h"

namespace stip::tokenizer_pipeline {
namespace {

using Span = Pattern::Span;

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

Behavior ParseBehavior(const json& j, const std::string& where) {
  const std::string b = j.is_string() ? j.get<std::string>() : "";
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  throw InvalidArgument(where + ": unknown split behavior " + j.dump());
}

// One span per character for which `pred` holds, and the gaps between.
std::vector<Span> CharMatches(std::string_view s, const std::function<bool(uint32_t)>& pred) {
  std::vector<Span> spans;
  if (s.empty()) {
    spans.push_back({0, 0, false});
    return spans;
  }
  size_t last = 0, i = 0;
  while (i < s.size()) {
    const size_t at = i;
    const uint32_t c = unicode::Next(s, &i);
    if (pred(c)) {
      if (last < at) spans.push_back({last, at, false});
      spans.push_back({at, i, true});
      last = i;
    }
  }
  if (last < s.size()) spans.push_back({last, s.size(), false});
  return spans;
}

// The (start, end) ranges to keep, per NormalizedString::split.
std::vector<std::pair<size_t, size_t>> ApplyBehavior(std::vector<Span> spans, Behavior behavior,
                                                     bool invert) {
  if (invert) {
    for (Span& s : spans) s.match = !s.match;
  }
  std::vector<std::pair<size_t, size_t>> out;
  switch (behavior) {
    case Behavior::kIsolated:
      for (const Span& s : spans) out.emplace_back(s.start, s.end);
      break;
    case Behavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.match) out.emplace_back(s.start, s.end);
      }
      break;
    case Behavior::kContiguous: {
      bool previous = false;
      for (const Span& s : spans) {
        if (s.match == previous && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.start, s.end);
        }
        previous = s.match;
      }
      break;
    }
    case Behavior::kMergedWithPrevious: {
      bool previous = false;
      for (const Span& s : spans) {
        if (s.match && !previous && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.start, s.end);
        }
        previous = s.match;
      }
      break;
    }
    case Behavior::kMergedWithNext: {
      bool previous = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous && !out.empty()) {
          out.back().first = it->start;
        } else {
          out.emplace_back(it->start, it->end);
        }
        previous = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  return out;
}

// Splits every piece by `find` (text -> spans), keeping non-empty parts.
template <typename Find>
void SplitPieces(std::vector<Piece>* pieces, Behavior behavior, bool invert, Find&& find) {
  std::vector<Piece> out;
  out.reserve(pieces->size() * 2);
  for (Piece& p : *pieces) {
    Materialize(&p);
    for (const auto& [start, end] : ApplyBehavior(find(p.text), behavior, invert)) {
      if (end <= start) continue;
      if (start == 0 && end == p.text.size()) {
        out.push_back(std::move(p));
        break;
      }
      out.push_back({p.text.substr(start, end - start), p.at_start && start == 0, false});
    }
  }
  *pieces = std::move(out);
}

bool IsBertPunctuation(uint32_t c) {
  return (c < 0x80 && ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
                       (c >= 123 && c <= 126))) ||
         unicode::IsPunctuation(c);
}

// GPT-2's pre-tokenizer regex (what ByteLevel with use_regex splits by).
constexpr char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

class ByteLevel final : public PreTokenizer {
 public:
  ByteLevel(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space),
        regex_(use_regex ? std::make_unique<Regex>(kGpt2Pattern, "ByteLevel") : nullptr) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces->size());
    for (Piece& p : *pieces) {
      Materialize(&p);  // (ByteLevel twice maps twice, as Hugging Face does)
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      if (!regex_) {
        p.byte_level = true;
        out.push_back(std::move(p));
        continue;
      }
      const std::string& t = p.text;
      size_t prev = 0;
      auto add = [&](size_t start, size_t end) {
        if (end > start)
          out.push_back({t.substr(start, end - start), p.at_start && start == 0, true});
      };
      regex_->ForEachMatch(t, [&](size_t start, size_t end) {
        add(prev, start);
        add(start, end);
        prev = end;
      });
      add(prev, t.size());
    }
    *pieces = std::move(out);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class Split final : public PreTokenizer {
 public:
  Split(const json& pattern, Behavior behavior, bool invert, const std::string& source)
      : pattern_(pattern, source), behavior_(behavior), invert_(invert) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    SplitPieces(pieces, behavior_, invert_,
                [&](std::string_view s) { return pattern_.FindMatches(s); });
  }

 private:
  Pattern pattern_;
  Behavior behavior_;
  bool invert_;
};

class CharSplit final : public PreTokenizer {
 public:
  CharSplit(std::function<bool(uint32_t)> pred, Behavior behavior)
      : pred_(std::move(pred)), behavior_(behavior) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    SplitPieces(pieces, behavior_, false,
                [&](std::string_view s) { return CharMatches(s, pred_); });
  }

 private:
  std::function<bool(uint32_t)> pred_;
  Behavior behavior_;
};

class Whitespace final : public PreTokenizer {
 public:
  Whitespace() : regex_("\\w+|[^\\w\\s]+", "Whitespace") {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    SplitPieces(pieces, Behavior::kRemoved, true, [&](std::string_view s) {
      std::vector<Span> spans;
      if (s.empty()) return std::vector<Span>{{0, 0, false}};
      size_t prev = 0;
      regex_.ForEachMatch(s, [&](size_t start, size_t end) {
        if (prev != start) spans.push_back({prev, start, false});
        spans.push_back({start, end, true});
        prev = end;
      });
      if (prev != s.size()) spans.push_back({prev, s.size(), false});
      return spans;
    });
  }

 private:
  Regex regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

class Metaspace final : public PreTokenizer {
 public:
  Metaspace(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {
    size_t i = 0;
    replacement_cp_ = unicode::Next(replacement_, &i);
  }
  void PreTokenize(std::vector<Piece>* pieces) const override {
    for (Piece& p : *pieces) {
      Materialize(&p);
      std::string t;
      t.reserve(p.text.size() + replacement_.size());
      for (char c : p.text) {
        if (c == ' ') {
          t += replacement_;
        } else {
          t += c;
        }
      }
      const bool starts = t.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_start))) {
        t.insert(0, replacement_);
      }
      p.text = std::move(t);
    }
    if (split_) {
      SplitPieces(pieces, Behavior::kMergedWithNext, false, [&](std::string_view s) {
        return CharMatches(s, [&](uint32_t c) { return c == replacement_cp_; });
      });
    }
  }

 private:
  std::string replacement_;
  uint32_t replacement_cp_;
  PrependScheme scheme_;
  bool split_;
};

class BertPreTokenizer final : public PreTokenizer {
 public:
  void PreTokenize(std::vector<Piece>* pieces) const override {
    SplitPieces(pieces, Behavior::kRemoved, false, [](std::string_view s) {
      return CharMatches(s, [](uint32_t c) { return unicode::IsWhitespace(c); });
    });
    SplitPieces(pieces, Behavior::kIsolated, false,
                [](std::string_view s) { return CharMatches(s, IsBertPunctuation); });
  }
};

class Sequence final : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void PreTokenize(std::vector<Piece>* pieces) const override {
    for (const auto& p : parts_) p->PreTokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

std::unique_ptr<PreTokenizer> MakeBertPreTokenizer() {
  return std::make_unique<BertPreTokenizer>();
}

std::unique_ptr<PreTokenizer> MakePreTokenizer(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  const std::string type = TypeOf(j);
  const std::string where = source + ": pre_tokenizer " + type;
  if (!j.is_object()) throw InvalidArgument(where + ": expected an object");
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevel>(j.value("add_prefix_space", true),
                                       j.value("use_regex", true));
  }
  if (type == "Split") {
    if (!j.contains("pattern")) throw InvalidArgument(where + " needs a \"pattern\"");
    return std::make_unique<Split>(j["pattern"], ParseBehavior(j.value("behavior", json()), where),
                                   j.value("invert", false), where);
  }
  if (type == "Metaspace") {
    std::string replacement = j.value("replacement", std::string("\u2581"));
    if (replacement.empty() ||
        unicode::CharLength(static_cast<unsigned char>(replacement[0])) != replacement.size()) {
      throw InvalidArgument(where + ": replacement must be one character");
    }
    PrependScheme scheme =
        j.value("add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      const std::string s = j["prepend_scheme"].get<std::string>();
      if (s == "always") {
        scheme = PrependScheme::kAlways;
      } else if (s == "first") {
        scheme = PrependScheme::kFirst;
      } else if (s == "never") {
        scheme = PrependScheme::kNever;
      } else {
        throw InvalidArgument(where + ": unknown prepend_scheme \"" + s + "\"");
      }
    }
    return std::make_unique<Metaspace>(replacement, scheme, j.value("split", true));
  }
  if (type == "Whitespace") return std::make_unique<Whitespace>();
  if (type == "WhitespaceSplit") {
    return std::make_unique<CharSplit>([](uint32_t c) { return unicode::IsWhitespace(c); },
                                       Behavior::kRemoved);
  }
  if (type == "Punctuation") {
    return std::make_unique<CharSplit>(IsBertPunctuation,
                                       ParseBehavior(j.value("behavior", json("Isolated")), where));
  }
  if (type == "Digits") {
    return std::make_unique<CharSplit>(
        [](uint32_t c) { return unicode::IsNumeric(c); },
        j.value("individual_digits", false) ? Behavior::kIsolated : Behavior::kContiguous);
  }
  if (type == "BertPreTokenizer") return MakeBertPreTokenizer();
  if (type == "CharDelimiterSplit") {
    const std::string d = j.value("delimiter", std::string());
    if (d.empty() || unicode::CharLength(static_cast<unsigned char>(d[0])) != d.size()) {
      throw InvalidArgument(where + ": delimiter must be one character");
    }
    size_t i = 0;
    const uint32_t cp = unicode::Next(d, &i);
    return std::make_unique<CharSplit>([cp](uint32_t c) { return c == cp; }, Behavior::kRemoved);
  }
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array()) {
      throw InvalidArgument(where + " needs a \"pretokenizers\" array");
    }
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (const json& p : j["pretokenizers"]) {
      auto part = MakePreTokenizer(p, source);
      if (part) parts.push_back(std::move(part));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  throw Unimplemented(where + " is not supported");
}

}  // namespace stip::tokenizer_pipeline
