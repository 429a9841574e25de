// Helpers shared by the tokenizer implementations (not part of the public
// interface): UTF-8 checks, file and JSON reading with file-naming errors, and
// tokenizer_config.json.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stip::tokenizer_internal {

// One step of UTF-8 decoding at the start of `s` (which must not be empty).
struct Utf8Step {
  enum Kind { kValid, kInvalid, kIncomplete } kind;
  // kValid: length of the character; kInvalid: length of the maximal invalid
  // subpart (>= 1, to be replaced by one U+FFFD); kIncomplete: the rest of `s`
  // is a valid but unfinished character.
  size_t length;
};
Utf8Step NextUtf8(std::string_view s);

// Byte offset of the first invalid (or incomplete) UTF-8 sequence, or npos.
size_t FindInvalidUtf8(std::string_view s);
// Throws InvalidArgument naming `what` and the offending byte offset.
void CheckUtf8(std::string_view s, std::string_view what);
// Replaces each invalid sequence (and an unfinished one at the end) by U+FFFD.
std::string SanitizeUtf8(std::string_view s);
void AppendUtf8(uint32_t code_point, std::string* out);
// The code point of a valid UTF-8 sequence of `length` (1 to 4) bytes at `s`.
uint32_t DecodeUtf8(const char* s, size_t length);

bool FileExists(const std::string& path);
std::string JoinPath(const std::string& dir, const std::string& name);
// Throws NotFound if the file cannot be opened.
std::string ReadFile(const std::string& path);
// Throws NotFound / InvalidArgument (naming the file) on failure.
nlohmann::json ReadJsonFile(const std::string& path);

// A token from tokenizer_config.json: either "<s>" or {"content": "<s>", ...}.
// Returns nullopt for null/absent; throws InvalidArgument otherwise.
std::optional<std::string> TokenContent(const nlohmann::json& value, const std::string& file,
                                        const std::string& key);

struct TokenizerConfig {
  struct AddedToken {
    int64_t id;
    std::string content;
    bool special;
  };
  std::optional<std::string> bos_token, eos_token, unk_token, pad_token;
  std::optional<std::string> cls_token, sep_token, mask_token;
  std::optional<bool> add_bos_token, add_eos_token;
  // BertTokenizer's options (vocab.txt directories).
  std::optional<bool> do_lower_case, strip_accents, tokenize_chinese_chars;
  std::vector<AddedToken> added_tokens_decoder;
};
// Reads Hugging Face's tokenizer_config.json (the keys above; others ignored).
TokenizerConfig ReadTokenizerConfig(const std::string& path);
TokenizerConfig ParseTokenizerConfig(const nlohmann::json& j, const std::string& path);

}  // namespace stip::tokenizer_internal
