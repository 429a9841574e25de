#include "common/jinja/lexer.h"

#include <cctype>
#include <cstring>

#include "common/error.h"
#include "common/jinja/value.h"

namespace stip::jinja {

std::string Where(const std::string& name, int line, int column) {
  return name + " line " + std::to_string(line) + ", column " + std::to_string(column);
}

namespace {

class Lexer {
 public:
  Lexer(std::string source, const std::string& name) : src_(std::move(source)), name_(name) {}

  std::vector<Token> Run() {
    bool line_starting = true;  // the previous tag ended with a newline (or none yet)
    while (pos_ < src_.size()) {
      const size_t start = FindTagStart(pos_);
      std::string data = src_.substr(pos_, start - pos_);
      const size_t data_pos = pos_;
      if (start == src_.size()) {
        Emit(TokenType::kData, std::move(data), data_pos);
        pos_ = start;
        break;
      }
      const char kind = src_[start + 1];  // '{', '%' or '#'
      const char sign = start + 2 < src_.size() ? src_[start + 2] : '\0';
      if (sign == '-') {
        RStrip(&data);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: spaces and tabs between a line's start and a block tag.
        const size_t nl = data.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < data.size() &&
            AllSpace(std::string_view(data).substr(l_pos))) {
          data.resize(l_pos);
        }
      }
      Emit(TokenType::kData, std::move(data), data_pos);
      pos_ = start + 2 + ((sign == '-' || sign == '+') ? 1 : 0);
      if (kind == '#') {
        line_starting = Comment(start);
      } else if (kind == '%' && IsRaw()) {
        line_starting = Raw(start);
      } else {
        line_starting = Tag(kind == '{', start);
      }
    }
    tokens_.push_back(Token{TokenType::kEof, "", LineOf(src_.size()), ColumnOf(src_.size())});
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void Fail(size_t at, const std::string& what) {
    line_ = column_ = 1;
    line_pos_ = 0;
    Advance(at);
    throw InvalidArgument(Where(name_, line_, column_) + ": " + what);
  }

  // Line and column (in code points, 1-based) of byte `at`: incremental,
  // since tokens are emitted in order.
  void Advance(size_t at) {
    while (line_pos_ < at && line_pos_ < src_.size()) {
      const auto b = static_cast<unsigned char>(src_[line_pos_]);
      if (b == '\n') {
        ++line_;
        column_ = 1;
      } else if ((b & 0xC0) != 0x80) {
        ++column_;
      }
      ++line_pos_;
    }
  }
  int LineOf(size_t at) {
    Advance(at);
    return line_;
  }
  int ColumnOf(size_t at) {
    Advance(at);
    return column_;
  }

  void Emit(TokenType type, std::string value, size_t at) {
    if (type == TokenType::kData && value.empty()) return;
    tokens_.push_back(Token{type, std::move(value), LineOf(at), ColumnOf(at)});
  }

  size_t FindTagStart(size_t from) const {
    for (size_t p = src_.find('{', from); p != std::string::npos; p = src_.find('{', p + 1)) {
      if (p + 1 < src_.size() && (src_[p + 1] == '{' || src_[p + 1] == '%' || src_[p + 1] == '#')) {
        return p;
      }
    }
    return src_.size();
  }

  static bool AllSpace(std::string_view s) {
    size_t p = 0;
    while (p < s.size()) {
      size_t len = 1;
      const uint32_t cp = DecodeAt(s, p, &len);
      if (cp == '\n' || !IsPythonSpace(cp)) return false;
      p += len;
    }
    return true;
  }

  static void RStrip(std::string* s) {
    // Python's \s: strip whole code points from the end.
    const std::vector<size_t> offs = CodePointOffsets(*s);
    size_t end = offs.size() - 1;
    while (end > 0) {
      size_t len = 1;
      if (!IsPythonSpace(DecodeAt(*s, offs[end - 1], &len))) break;
      --end;
    }
    s->resize(offs[end]);
  }

  // Skips whitespace from pos_ (after a `-` modifier on a closing tag).
  void SkipAllSpace() {
    while (pos_ < src_.size()) {
      size_t len = 1;
      if (!IsPythonSpace(DecodeAt(src_, pos_, &len))) break;
      pos_ += len;
    }
  }

  // After a closing delimiter; returns whether the consumed text ended with
  // a newline. `trim`: trim_blocks applies (block and comment tags).
  bool AfterClose(bool minus, bool trim) {
    if (minus) {
      const size_t before = pos_;
      SkipAllSpace();
      return pos_ > before && src_[pos_ - 1] == '\n';
    }
    if (trim && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
      return true;
    }
    return false;
  }

  bool Comment(size_t start) {
    const size_t end = src_.find("#}", pos_);
    if (end == std::string::npos) Fail(start, "unterminated comment ({# without #})");
    const bool minus = end > pos_ && src_[end - 1] == '-';
    pos_ = end + 2;
    return AfterClose(minus, true);
  }

  bool IsRaw() const {
    size_t p = pos_;
    while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < src_.size() && std::isspace(static_cast<unsigned char>(src_[p]))) ++p;
    if (p < src_.size() && src_[p] == '-') ++p;
    return src_.compare(p, 2, "%}") == 0;
  }

  bool Raw(size_t start) {
    size_t p = src_.find("%}", pos_);
    const bool open_minus = p > 0 && src_[p - 1] == '-';
    pos_ = p + 2;
    if (open_minus) SkipAllSpace();
    // Find {%[-+]? endraw [-]?%}
    for (size_t q = src_.find("{%", pos_); q != std::string::npos; q = src_.find("{%", q + 2)) {
      size_t r = q + 2;
      const bool close_minus = r < src_.size() && src_[r] == '-';
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) ++r;
      while (r < src_.size() && std::isspace(static_cast<unsigned char>(src_[r]))) ++r;
      if (src_.compare(r, 6, "endraw") != 0) continue;
      r += 6;
      while (r < src_.size() && std::isspace(static_cast<unsigned char>(src_[r]))) ++r;
      bool end_minus = false;
      if (r < src_.size() && src_[r] == '-') {
        end_minus = true;
        ++r;
      }
      if (src_.compare(r, 2, "%}") != 0) continue;
      std::string data = src_.substr(pos_, q - pos_);
      if (close_minus) RStrip(&data);
      Emit(TokenType::kData, std::move(data), pos_);
      pos_ = r + 2;
      return AfterClose(end_minus, true);
    }
    Fail(start, "unterminated raw block ({% raw %} without {% endraw %})");
  }

  // The inside of {{ ... }} or {% ... %}.
  bool Tag(bool variable, size_t start) {
    Emit(variable ? TokenType::kVarBegin : TokenType::kBlockBegin, "", start);
    const char* close = variable ? "}}" : "%}";
    int depth = 0;  // open brackets: "}}" inside {{ {'a': {'b': 1}} }} closes a dict
    while (true) {
      while (pos_ < src_.size() && std::isspace(static_cast<unsigned char>(src_[pos_]))) ++pos_;
      if (pos_ >= src_.size()) {
        Fail(start, std::string("unterminated tag (no ") + close + ")");
      }
      const char c = src_[pos_];
      if (depth == 0) {
        if (c == '-' && src_.compare(pos_ + 1, 2, close) == 0) {
          Emit(variable ? TokenType::kVarEnd : TokenType::kBlockEnd, "", pos_);
          pos_ += 3;
          return AfterClose(true, !variable);
        }
        if (src_.compare(pos_, 2, close) == 0) {
          Emit(variable ? TokenType::kVarEnd : TokenType::kBlockEnd, "", pos_);
          pos_ += 2;
          return AfterClose(false, !variable);
        }
      }
      const size_t at = pos_;
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = pos_;
        while (e < src_.size() &&
               (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) {
          ++e;
        }
        Emit(TokenType::kName, src_.substr(pos_, e - pos_), at);
        pos_ = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        Number(at);
      } else if (c == '\'' || c == '"') {
        String(at);
      } else {
        static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*",
                                           "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                           "]",  "{",  "}",  ",",  ".",  ":",  "|"};
        const char* op = nullptr;
        for (const char* o : kOps) {
          if (src_.compare(pos_, std::strlen(o), o) == 0) {
            op = o;
            break;
          }
        }
        if (!op) {
          Fail(at, "unexpected character " + QuoteForMessage(src_.substr(pos_, 1)) + " in a tag");
        }
        if (*op == '(' || *op == '[' || *op == '{') ++depth;
        if ((*op == ')' || *op == ']' || *op == '}') && depth > 0) --depth;
        Emit(TokenType::kOp, op, at);
        pos_ += std::strlen(op);
      }
    }
  }

  void Number(size_t at) {
    size_t e = pos_;
    auto digits = [&] {
      while (e < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[e])) ||
                                 (src_[e] == '_' && e + 1 < src_.size() &&
                                  std::isdigit(static_cast<unsigned char>(src_[e + 1]))))) {
        ++e;
      }
    };
    digits();
    bool is_float = false;
    if (e + 1 < src_.size() && src_[e] == '.' &&
        std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
      is_float = true;
      ++e;
      digits();
    }
    if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
      size_t f = e + 1;
      if (f < src_.size() && (src_[f] == '+' || src_[f] == '-')) ++f;
      if (f < src_.size() && std::isdigit(static_cast<unsigned char>(src_[f]))) {
        is_float = true;
        e = f;
        digits();
      }
    }
    std::string text;
    for (size_t k = pos_; k < e; ++k) {
      if (src_[k] != '_') text += src_[k];
    }
    Emit(is_float ? TokenType::kFloat : TokenType::kInt, text, at);
    pos_ = e;
  }

  // Python's unicode-escape decoding of a string literal.
  void String(size_t at) {
    const char quote = src_[pos_];
    std::string out;
    size_t p = pos_ + 1;
    while (true) {
      if (p >= src_.size()) Fail(at, "unterminated string");
      const char c = src_[p];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        ++p;
        continue;
      }
      if (p + 1 >= src_.size()) Fail(at, "unterminated string");
      const char e = src_[p + 1];
      p += 2;
      auto hex = [&](int n) -> uint32_t {
        uint32_t v = 0;
        for (int k = 0; k < n; ++k) {
          if (p >= src_.size() || !std::isxdigit(static_cast<unsigned char>(src_[p]))) {
            Fail(at, "truncated \\x, \\u or \\U escape in a string");
          }
          const char h = src_[p++];
          v = v * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                                 ? h - '0'
                                                 : (std::tolower(h) - 'a' + 10));
        }
        return v;
      };
      auto append_cp = [&](uint32_t cp) {
        if (cp > 0x10FFFF) Fail(at, "escape beyond U+10FFFF in a string");
        if (cp < 0x80) {
          out += static_cast<char>(cp);
        } else if (cp < 0x800) {
          out += static_cast<char>(0xC0 | (cp >> 6));
          out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
          out += static_cast<char>(0xE0 | (cp >> 12));
          out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
          out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
          out += static_cast<char>(0xF0 | (cp >> 18));
          out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
          out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
          out += static_cast<char>(0x80 | (cp & 0x3F));
        }
      };
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\n':
          break;  // line continuation
        case 'x':
          append_cp(hex(2));
          break;
        case 'u':
          append_cp(hex(4));
          break;
        case 'U':
          append_cp(hex(8));
          break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && p < src_.size() && src_[p] >= '0' && src_[p] <= '7'; ++k) {
              v = v * 8 + static_cast<uint32_t>(src_[p++] - '0');
            }
            append_cp(v);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    Emit(TokenType::kString, std::move(out), at);
    pos_ = p + 1;
  }

  std::string src_;
  const std::string& name_;
  size_t pos_ = 0;
  std::vector<Token> tokens_;
  int line_ = 1, column_ = 1;
  size_t line_pos_ = 0;
};

}  // namespace

std::vector<Token> Tokenize(std::string_view source, const std::string& name) {
  for (size_t p = 0; p < source.size();) {
    size_t len = 1;
    if (DecodeAt(source, p, &len) == 0xFFFD && len == 1) {
      throw InvalidArgument(name + ": not valid UTF-8 (byte " + std::to_string(p) + ")");
    }
    p += len;
  }
  // Newlines normalized to \n; one trailing newline dropped (keep_trailing_newline off).
  std::string s;
  s.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      s += '\n';
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      s += source[k];
    }
  }
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return Lexer(std::move(s), name).Run();
}

}  // namespace stip::jinja
