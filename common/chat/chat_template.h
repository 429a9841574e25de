// A model's chat template (Hugging Face's `chat_template`): found in a model
// directory, rendered with common/jinja/ as transformers' apply_chat_template
// renders it, and encoded into token ids WITHOUT letting message content
// inject special tokens.
//
// Where the template comes from, first match wins (as transformers):
//   DIR/chat_template.jinja
//   DIR/chat_template.json            {"chat_template": "..."}
//   DIR/tokenizer_config.json         "chat_template": a string, or a list of
//                                     {"name", "template"} (the one named "default")
// The context is what transformers passes: messages, add_generation_prompt,
// tools/documents (none), the special tokens of tokenizer_config.json
// (bos_token, eos_token, unk_token, pad_token, ...), plus extra variables.
//
// Special tokens and safety (a deliberate difference from transformers):
// transformers renders the conversation to one string and tokenizes it with
// special tokens enabled, so a user who types "<|im_end|>" in a message ends
// the turn. Here the renderer tracks which bytes of the output came from the
// messages (jinja::Text); Encode turns special-token spellings into their ids
// only where the template itself wrote them, and encodes everything else --
// message content included -- as plain text.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/jinja/template.h"

namespace stip {

class Tokenizer;

struct RenderedChat {
  std::string text;
  // Byte ranges of `text` that came from the messages (untrusted).
  std::vector<std::pair<size_t, size_t>> untrusted;
};

class ChatTemplate {
 public:
  // nullptr if the directory has no chat template. Throws stip::Error naming
  // the file for a malformed one (bad JSON, a syntax error with its line).
  static std::unique_ptr<ChatTemplate> FromDirectory(const std::string& dir);
  // A template given as source; `tokens` are variables such as bos_token.
  static std::unique_ptr<ChatTemplate> FromSource(const std::string& source,
                                                  const std::string& name,
                                                  const nlohmann::ordered_json& tokens = {},
                                                  std::vector<std::string> special_tokens = {});

  // `messages`: a JSON list of objects (role, content, ...). Throws
  // kInvalidArgument (naming the template line) for errors while rendering,
  // including the template's raise_exception.
  // (ordered_json: a message's keys keep their order, as in Python.)
  RenderedChat Render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                      const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  // Token ids of a rendered conversation: special tokens where the template
  // wrote them, plain text elsewhere (no BOS/EOS added: templates write them).
  std::vector<int64_t> Encode(const Tokenizer& tokenizer, const RenderedChat& rendered) const;

  const std::string& source_name() const { return name_; }
  // A token variable of the context ("bos_token", "eos_token"...), "" if none.
  std::string token(const std::string& key) const;
  // The special-token spellings the directory declares.
  const std::vector<std::string>& special_tokens() const { return special_tokens_; }

 private:
  ChatTemplate() = default;
  jinja::Template template_;
  std::string name_;
  nlohmann::ordered_json tokens_ = nlohmann::ordered_json::object();  // bos_token, ...
  std::vector<std::string> special_tokens_;                           // longest first
};

// Reads a JSON list of {"role": "...", "content": "..."} messages from a
// file. Throws kInvalidArgument naming the file and the entry at fault.
nlohmann::ordered_json ReadChatMessages(const std::string& path);
// Checks a parsed messages list (as ReadChatMessages does).
void CheckChatMessages(const nlohmann::ordered_json& messages, const std::string& source);

}  // namespace stip
