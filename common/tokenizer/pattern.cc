// Regex and Pattern of the tokenizer pipeline (pipeline.h), and GPT-2's
// byte-level alphabet.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>

#include "common/error.h"
#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/unicode.h"

namespace stip::tokenizer_pipeline {
namespace {

// Unicode White_Space: Oniguruma's \s (PCRE2's \s leaves out U+0085).
constexpr char kWhiteSpace[] =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";
// Oniguruma's (and Rust regex's) Unicode \w.
constexpr char kWord[] = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}";

// True if PCRE2 knows `name` as a script (\p{sc:name}).
bool IsScript(const std::string& name) {
  const std::string p = "\\p{sc:" + name + "}";
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  pcre2_code_free(code);
  return code != nullptr;
}

// Rewrites \s, \S, \w, \W to the classes above (inside and outside [...]),
// and \p{Script} to \p{sc:Script}: Oniguruma's \p{Han} is the Script
// property, PCRE2's is Script_Extensions (which also has "、" and "。").
std::string TranslatePattern(const std::string& p) {
  std::string out;
  out.reserve(p.size() + 64);
  int class_depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      ++i;
      const bool in_class = class_depth > 0;
      if (e == 's' || e == 'w') {
        const char* cls = e == 's' ? kWhiteSpace : kWord;
        out += in_class ? std::string(cls) : "[" + std::string(cls) + "]";
      } else if ((e == 'S' || e == 'W') && !in_class) {
        out += "[^" + std::string(e == 'S' ? kWhiteSpace : kWord) + "]";
      } else if ((e == 'p' || e == 'P') && i + 1 < p.size() && p[i + 1] == '{') {
        const size_t close = p.find('}', i + 2);
        std::string name = close == std::string::npos ? "" : p.substr(i + 2, close - i - 2);
        const bool negated = !name.empty() && name[0] == '^';
        if (negated) name.erase(0, 1);
        if (name.size() > 2 && name.find(':') == std::string::npos && IsScript(name)) {
          out += std::string("\\") + e + "{" + (negated ? "^" : "") + "sc:" + name + "}";
          i = close;
        } else {
          out += c;
          out += e;
        }
      } else if (e == 'Q') {  // literal up to \E
        const size_t end = p.find("\\E", i + 1);
        const size_t stop = end == std::string::npos ? p.size() : end + 2;
        out += p.substr(i - 1, stop - (i - 1));
        i = stop - 1;
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (c == '[') {
      if (class_depth == 0 || (i + 1 < p.size() && p[i + 1] == ':')) {
        // A POSIX class [:alpha:] inside a class does not nest.
        if (class_depth > 0) {
          const size_t end = p.find(":]", i + 2);
          if (end != std::string::npos) {
            out += p.substr(i, end + 2 - i);
            i = end + 1;
            continue;
          }
        }
        ++class_depth;
        out += c;
        // A ']' right after '[' or '[^' is literal.
        if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
        if (i + 1 < p.size() && p[i + 1] == ']') out += "\\]", ++i;
        continue;
      }
      ++class_depth;  // Oniguruma nests classes; PCRE2 reads '[' literally
      out += "\\[";
      continue;
    }
    if (c == ']' && class_depth > 0) {
      --class_depth;
      if (class_depth > 0) continue;  // (a nested class: flattened)
    }
    out += c;
  }
  return out;
}

std::string PcreError(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof(buf)) < 0) return "error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

struct MatchData {
  pcre2_match_data* md;
  MatchData() : md(pcre2_match_data_create(1, nullptr)) {
    if (!md) throw ResourceExhausted("out of memory for regex match data");
  }
  ~MatchData() { pcre2_match_data_free(md); }
};

struct ByteLevelTables {
  std::array<std::string, 256> byte_to_char;
  std::array<int16_t, 324> char_to_byte;
  ByteLevelTables() {
    char_to_byte.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      unicode::Append(cp, &byte_to_char[b]);
      char_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};
const ByteLevelTables& Tables() {
  static const ByteLevelTables t;
  return t;
}

}  // namespace

const std::string& ByteLevelChar(unsigned char byte) { return Tables().byte_to_char[byte]; }

int ByteOfByteLevelChar(uint32_t cp) {
  return cp < Tables().char_to_byte.size() ? Tables().char_to_byte[cp] : -1;
}

void Materialize(Piece* piece) {
  if (!piece->byte_level) return;
  std::string out;
  out.reserve(piece->text.size() * 2);
  for (unsigned char b : piece->text) out += ByteLevelChar(b);
  piece->text = std::move(out);
  piece->byte_level = false;
}

std::string TypeOf(const json& j) {
  if (j.is_null()) return "null";
  if (j.is_object()) {
    auto it = j.find("type");
    if (it != j.end() && it->is_string()) return it->get<std::string>();
  }
  return j.dump();
}

// ---------------------------------------------------------------------------
// Regex

Regex::Regex(const std::string& pattern, const std::string& source) : pattern_(pattern) {
  const std::string translated = TranslatePattern(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (!code) {
    throw InvalidArgument(source + ": cannot compile the regex /" + pattern +
                          "/: " + PcreError(error) + " at offset " + std::to_string(offset));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

size_t Regex::CharLen(std::string_view s, size_t at) {
  return unicode::CharLength(static_cast<unsigned char>(s[at]));
}

bool Regex::Find(std::string_view s, size_t from, size_t* start, size_t* end) const {
  auto* code = static_cast<const pcre2_code*>(code_);
  // One pair of offsets is all we read (rc 0 just says the others were left out).
  thread_local MatchData md;
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), from,
                             PCRE2_NO_UTF_CHECK, md.md, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) throw Internal("regex /" + pattern_ + "/ failed: " + PcreError(rc));
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.md);
  *start = ov[0];
  *end = ov[1];
  return true;
}

// ---------------------------------------------------------------------------
// Pattern

Pattern::Pattern(const json& j, const std::string& source) {
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    literal_ = j["String"].get<std::string>();
  } else if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    regex_ = std::make_unique<Regex>(j["Regex"].get<std::string>(), source);
  } else {
    throw InvalidArgument(
        source + ": a pattern must be {\"String\": ...} or {\"Regex\": ...}, got " + j.dump());
  }
}

std::vector<Pattern::Span> Pattern::FindMatches(std::string_view s) const {
  std::vector<Span> spans;
  if (s.empty()) {
    spans.push_back({0, 0, false});
    return spans;
  }
  size_t prev = 0;
  auto add = [&](size_t start, size_t end) {
    if (prev != start) spans.push_back({prev, start, false});
    spans.push_back({start, end, true});
    prev = end;
  };
  if (regex_) {
    regex_->ForEachMatch(s, add);
  } else if (!literal_.empty()) {
    for (size_t at = s.find(literal_); at != std::string_view::npos;
         at = s.find(literal_, at + literal_.size())) {
      add(at, at + literal_.size());
    }
  }
  if (prev != s.size()) spans.push_back({prev, s.size(), false});
  return spans;
}

std::string Pattern::ReplaceAll(std::string_view s, std::string_view content) const {
  std::string out;
  out.reserve(s.size());
  for (const Span& span : FindMatches(s)) {
    if (span.match) {
      out += content;
    } else {
      out.append(s.substr(span.start, span.end - span.start));
    }
  }
  return out;
}

}  // namespace stip::tokenizer_pipeline
