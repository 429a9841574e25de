// Unicode helpers over ICU (common/tokenizer/unicode.h).
#include "common/tokenizer/unicode.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/ustring.h>

#include "common/error.h"
#include "common/tokenizer/internal.h"

namespace stip::unicode {

uint32_t Next(std::string_view s, size_t* pos) {
  const size_t n = CharLength(static_cast<unsigned char>(s[*pos]));
  const uint32_t cp = tokenizer_internal::DecodeUtf8(s.data() + *pos, n);
  *pos += n;
  return cp;
}

void Append(uint32_t cp, std::string* out) { tokenizer_internal::AppendUtf8(cp, out); }

namespace {

bool IsAscii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

const icu::Normalizer2* Instance(Form form) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case Form::kNFC:
      n = icu::Normalizer2::getNFCInstance(err);
      break;
    case Form::kNFD:
      n = icu::Normalizer2::getNFDInstance(err);
      break;
    case Form::kNFKC:
      n = icu::Normalizer2::getNFKCInstance(err);
      break;
    case Form::kNFKD:
      n = icu::Normalizer2::getNFKDInstance(err);
      break;
  }
  if (U_FAILURE(err) || !n) {
    throw Internal(std::string("ICU normalizer unavailable: ") + u_errorName(err));
  }
  return n;
}

// General-category masks of ASCII, looked up once (the common case).
struct AsciiMasks {
  uint32_t mask[128];
  AsciiMasks() {
    for (UChar32 c = 0; c < 128; ++c) mask[c] = U_GET_GC_MASK(c);
  }
};

uint32_t Mask(uint32_t c) {
  static const AsciiMasks ascii;
  return c < 128 ? ascii.mask[c] : U_GET_GC_MASK(static_cast<UChar32>(c));
}

}  // namespace

std::string Normalize(std::string_view s, Form form) {
  if (IsAscii(s)) return std::string(s);  // ASCII is invariant under all four forms
  const icu::Normalizer2* n = Instance(form);
  UErrorCode err = U_ZERO_ERROR;
  const icu::StringPiece piece(s.data(), static_cast<int32_t>(s.size()));
  if (n->isNormalizedUTF8(piece, err) && U_SUCCESS(err)) return std::string(s);
  err = U_ZERO_ERROR;
  std::string out;
  icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(s.size()));
  n->normalizeUTF8(0, piece, sink, nullptr, err);
  if (U_FAILURE(err)) throw Internal(std::string("ICU normalization failed: ") + u_errorName(err));
  return out;
}

std::string Lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      out.push_back(static_cast<char>(b >= 'A' && b <= 'Z' ? b + 32 : b));
      ++i;
      continue;
    }
    const uint32_t c = Next(s, &i);
    // Full lowercase mapping of the character on its own (no context, as Rust).
    UChar src[2];
    int32_t src_len = 0;
    U16_APPEND_UNSAFE(src, src_len, static_cast<UChar32>(c));
    UChar dst[8];
    UErrorCode err = U_ZERO_ERROR;
    const int32_t n = u_strToLower(dst, 8, src, src_len, "", &err);
    if (U_FAILURE(err) || n > 8) {
      Append(c, &out);
      continue;
    }
    for (int32_t k = 0; k < n;) {
      UChar32 cp;
      U16_NEXT(dst, k, n, cp);
      Append(static_cast<uint32_t>(cp), &out);
    }
  }
  return out;
}

bool IsWhitespace(uint32_t c) {
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || c == 0x20;
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE);
}
bool IsPunctuation(uint32_t c) { return (Mask(c) & U_GC_P_MASK) != 0; }
bool IsNumeric(uint32_t c) { return (Mask(c) & U_GC_N_MASK) != 0; }
bool IsMark(uint32_t c) { return (Mask(c) & U_GC_M_MASK) != 0; }
bool IsOther(uint32_t c) { return (Mask(c) & U_GC_C_MASK) != 0; }
bool IsSpaceSeparator(uint32_t c) { return (Mask(c) & U_GC_ZS_MASK) != 0; }
bool IsAlphabetic(uint32_t c) {
  if (c < 0x80) return (c | 32) >= 'a' && (c | 32) <= 'z';
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC);
}

bool IsChineseChar(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

}  // namespace stip::unicode
