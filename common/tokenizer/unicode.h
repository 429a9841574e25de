// Unicode properties and transforms for the tokenizer pipeline, from ICU
// (libicu): normalization forms, lowercase, general categories. Everything
// works on UTF-8 (the input is checked before it gets here).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace stip::unicode {

// Decodes the code point at s[*pos] (valid UTF-8) and advances *pos.
uint32_t Next(std::string_view s, size_t* pos);
// Length in bytes of the UTF-8 character starting with byte `lead`.
inline size_t CharLength(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
void Append(uint32_t code_point, std::string* out);

enum class Form { kNFC, kNFD, kNFKC, kNFKD };
// The normalization form of `s` (ICU's Normalizer2).
std::string Normalize(std::string_view s, Form form);

// Rust's char::to_lowercase for each character (full mappings, no context):
// what Hugging Face's Lowercase normalizer does.
std::string Lowercase(std::string_view s);

// Rust's char::is_whitespace: the Unicode White_Space property.
bool IsWhitespace(uint32_t c);
// Unicode general categories.
bool IsPunctuation(uint32_t c);     // P*
bool IsNumeric(uint32_t c);         // N* (Rust's char::is_numeric)
bool IsMark(uint32_t c);            // M*
bool IsOther(uint32_t c);           // C*
bool IsSpaceSeparator(uint32_t c);  // Zs
bool IsAlphabetic(uint32_t c);      // the Alphabetic property
// Rust's is_alphanumeric (Alphabetic or N*).
inline bool IsAlphanumeric(uint32_t c) { return IsAlphabetic(c) || IsNumeric(c); }
// CJK ideographs as BERT defines them (its tokenize_chinese_chars).
bool IsChineseChar(uint32_t c);

}  // namespace stip::unicode
