// The Jinja lexer: template source -> tokens, with Jinja2's whitespace
// control as transformers configures it (trim_blocks and lstrip_blocks on,
// keep_trailing_newline off, `-` and `+` modifiers on tags).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace stip::jinja {

enum class TokenType {
  kData,        // template text between tags
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,  // value: the unescaped string
  kInt,
  kFloat,
  kOp,  // value: the operator, e.g. "==", "(", "|"
  kEof,
};

struct Token {
  TokenType type;
  std::string value;
  int line = 1;
  int column = 1;
};

// Throws stip::Error (kInvalidArgument) naming `name`, the line and column
// on an unterminated tag, comment or string, or a character that starts no
// token.
std::vector<Token> Tokenize(std::string_view source, const std::string& name);

// "NAME line L, column C" for error messages.
std::string Where(const std::string& name, int line, int column);

}  // namespace stip::jinja
