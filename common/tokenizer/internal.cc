// Helpers shared by the tokenizer implementations (common/tokenizer/internal.h).
#include "common/tokenizer/internal.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "common/error.h"

namespace stip {
namespace tokenizer_internal {

Utf8Step NextUtf8(std::string_view s) {
  const auto b0 = static_cast<unsigned char>(s[0]);
  if (b0 < 0x80) return {Utf8Step::kValid, 1};
  size_t need;                         // continuation bytes
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the first continuation byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;  // no overlongs
    if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
  } else {
    return {Utf8Step::kInvalid, 1};
  }
  for (size_t i = 1; i <= need; ++i) {
    if (i >= s.size()) return {Utf8Step::kIncomplete, s.size()};
    const auto b = static_cast<unsigned char>(s[i]);
    const unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) return {Utf8Step::kInvalid, i};
  }
  return {Utf8Step::kValid, need + 1};
}

size_t FindInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // Fast path for ASCII.
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Utf8Step step = NextUtf8(s.substr(i));
    if (step.kind != Utf8Step::kValid) return i;
    i += step.length;
  }
  return std::string_view::npos;
}

void CheckUtf8(std::string_view s, std::string_view what) {
  const size_t bad = FindInvalidUtf8(s);
  if (bad == std::string_view::npos) return;
  static const char kHex[] = "0123456789abcdef";
  const auto b = static_cast<unsigned char>(s[bad]);
  throw InvalidArgument(std::string(what) + " is not valid UTF-8: invalid byte 0x" + kHex[b >> 4] +
                        kHex[b & 15] + " at offset " + std::to_string(bad));
}

uint32_t DecodeUtf8(const char* s, size_t length) {
  const auto* p = reinterpret_cast<const unsigned char*>(s);
  switch (length) {
    case 1:
      return p[0];
    case 2:
      return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    case 3:
      return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    default:
      return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) |
             (p[3] & 0x3Fu);
  }
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string SanitizeUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const Utf8Step step = NextUtf8(s.substr(i));
    if (step.kind == Utf8Step::kValid) {
      out.append(s.data() + i, step.length);
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
    }
    i += step.length;
  }
  return out;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw NotFound("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw DataLoss("error reading " + path);
  return ss.str();
}

nlohmann::json ReadJsonFile(const std::string& path) {
  const std::string text = ReadFile(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(path + ": malformed JSON: " + e.what());
  }
}

std::optional<std::string> TokenContent(const nlohmann::json& value, const std::string& file,
                                        const std::string& key) {
  if (value.is_null()) return std::nullopt;
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object()) {
    auto it = value.find("content");
    if (it != value.end() && it->is_string()) return it->get<std::string>();
  }
  throw InvalidArgument(file + ": \"" + key +
                        "\" must be a string or an object with a string \"content\"");
}

TokenizerConfig ReadTokenizerConfig(const std::string& path) {
  const nlohmann::json j = ReadJsonFile(path);
  try {
    return ParseTokenizerConfig(j, path);
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(path + ": malformed tokenizer config: " + e.what());
  }
}

TokenizerConfig ParseTokenizerConfig(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object()) throw InvalidArgument(path + ": expected a JSON object");
  TokenizerConfig config;
  auto token = [&](const char* key) -> std::optional<std::string> {
    auto it = j.find(key);
    return it == j.end() ? std::nullopt : TokenContent(*it, path, key);
  };
  auto flag = [&](const char* key) -> std::optional<bool> {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return std::nullopt;
    if (!it->is_boolean()) throw InvalidArgument(path + ": \"" + key + "\" must be a boolean");
    return it->get<bool>();
  };
  config.bos_token = token("bos_token");
  config.eos_token = token("eos_token");
  config.unk_token = token("unk_token");
  config.pad_token = token("pad_token");
  config.cls_token = token("cls_token");
  config.sep_token = token("sep_token");
  config.mask_token = token("mask_token");
  config.do_lower_case = flag("do_lower_case");
  config.strip_accents = flag("strip_accents");
  config.tokenize_chinese_chars = flag("tokenize_chinese_chars");
  config.add_bos_token = flag("add_bos_token");
  config.add_eos_token = flag("add_eos_token");
  auto it = j.find("added_tokens_decoder");
  if (it != j.end() && !it->is_null()) {
    if (!it->is_object())
      throw InvalidArgument(path + ": \"added_tokens_decoder\" must be an object");
    for (const auto& [key, value] : it->items()) {
      TokenizerConfig::AddedToken t;
      try {
        size_t used = 0;
        t.id = std::stoll(key, &used);
        if (used != key.size() || t.id < 0) throw std::invalid_argument(key);
      } catch (const std::logic_error&) {
        throw InvalidArgument(path + ": added_tokens_decoder key \"" + key +
                              "\" is not a token id");
      }
      auto content = TokenContent(value, path, "added_tokens_decoder." + key);
      if (!content)
        throw InvalidArgument(path + ": added_tokens_decoder." + key + " has no content");
      t.content = *content;
      t.special = value.is_object() && value.value("special", false);
      config.added_tokens_decoder.push_back(std::move(t));
    }
  }
  return config;
}

}  // namespace tokenizer_internal

namespace ti = tokenizer_internal;

size_t CompleteUtf8Prefix(std::string_view s) {
  // An unfinished character (a valid lead byte followed by fewer valid
  // continuation bytes than it needs) starts within the last 3 bytes. Scanning
  // from 4 bytes before the end resynchronises at the first lead byte, since
  // continuation bytes at a boundary scan as single invalid bytes.
  size_t i = s.size() > 4 ? s.size() - 4 : 0;
  while (i < s.size()) {
    const ti::Utf8Step step = ti::NextUtf8(s.substr(i));
    if (step.kind == ti::Utf8Step::kIncomplete) return i;
    i += step.length;
  }
  return s.size();
}

}  // namespace stip
