#include "common/chat/chat_template.h"

#include <algorithm>
#include <map>

#include "common/error.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/files.h"

namespace stip {

namespace {

// Tokenizer files: nlohmann::json (a vocabulary of 262k keys would make
// ordered_json's linear inserts quadratic).
nlohmann::json ReadJson(const std::string& path) {
  try {
    return nlohmann::json::parse(ReadFile(path));
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(path + ": not valid JSON (" + e.what() + ")");
  }
}

// "<s>" or {"content": "<s>", ...} (transformers' AddedToken forms).
std::optional<std::string> TokenString(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object()) {
    auto it = v.find("content");
    if (it != v.end() && it->is_string()) return it->get<std::string>();
  }
  return std::nullopt;
}

constexpr const char* kTokenKeys[] = {"bos_token", "eos_token", "unk_token", "pad_token",
                                      "sep_token", "cls_token", "mask_token"};

void AddSpecial(const std::string& s, std::vector<std::string>* out) {
  if (!s.empty() && std::find(out->begin(), out->end(), s) == out->end()) out->push_back(s);
}

// Special tokens and token variables declared by a tokenizer config or map.
void CollectTokens(const nlohmann::json& j, nlohmann::ordered_json* tokens,
                   std::vector<std::string>* special) {
  if (!j.is_object()) return;
  for (const char* key : kTokenKeys) {
    auto it = j.find(key);
    if (it == j.end()) continue;
    if (auto s = TokenString(*it)) {
      if (!tokens->contains(key)) (*tokens)[key] = *s;
      AddSpecial(*s, special);
    }
  }
  if (auto it = j.find("additional_special_tokens"); it != j.end() && it->is_array()) {
    for (const auto& t : *it) {
      if (auto s = TokenString(t)) AddSpecial(*s, special);
    }
  }
  if (auto it = j.find("added_tokens_decoder"); it != j.end() && it->is_object()) {
    for (const auto& [id, t] : it->items()) {
      if (t.is_object() && t.value("special", false)) {
        if (auto s = TokenString(t)) AddSpecial(*s, special);
      }
    }
  }
}

std::string TemplateFromConfig(const nlohmann::json& v, const std::string& file) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    // A list of named templates: transformers uses the one named "default".
    for (const auto& t : v) {
      if (t.is_object() && t.value("name", "") == "default" && t.contains("template") &&
          t["template"].is_string()) {
        return t["template"].get<std::string>();
      }
    }
    throw InvalidArgument(file +
                          ": \"chat_template\" is a list of named templates without one "
                          "named \"default\"");
  }
  throw InvalidArgument(file + ": \"chat_template\" must be a string or a list of named templates");
}

}  // namespace

std::unique_ptr<ChatTemplate> ChatTemplate::FromSource(const std::string& source,
                                                       const std::string& name,
                                                       const nlohmann::ordered_json& tokens,
                                                       std::vector<std::string> special_tokens) {
  std::unique_ptr<ChatTemplate> t(new ChatTemplate());
  t->template_ = jinja::Template::Parse(source, name);
  t->name_ = name;
  if (tokens.is_object()) t->tokens_ = tokens;
  std::stable_sort(special_tokens.begin(), special_tokens.end(),
                   [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  t->special_tokens_ = std::move(special_tokens);
  return t;
}

std::unique_ptr<ChatTemplate> ChatTemplate::FromDirectory(const std::string& dir) {
  const std::string config_path = JoinPath(dir, "tokenizer_config.json");
  nlohmann::json config;
  if (PathExists(config_path)) config = ReadJson(config_path);

  std::string source, name;
  const std::string jinja_path = JoinPath(dir, "chat_template.jinja");
  const std::string json_path = JoinPath(dir, "chat_template.json");
  if (PathExists(jinja_path)) {
    source = ReadFile(jinja_path);
    name = jinja_path;
  } else if (PathExists(json_path)) {
    nlohmann::json j = ReadJson(json_path);
    if (!j.is_object() || !j.contains("chat_template")) {
      throw InvalidArgument(json_path + ": no \"chat_template\"");
    }
    source = TemplateFromConfig(j["chat_template"], json_path);
    name = json_path;
  } else if (config.is_object() && config.contains("chat_template") &&
             !config["chat_template"].is_null()) {
    source = TemplateFromConfig(config["chat_template"], config_path);
    name = config_path;
  } else {
    return nullptr;
  }

  nlohmann::ordered_json tokens = nlohmann::ordered_json::object();
  std::vector<std::string> special;
  CollectTokens(config, &tokens, &special);
  const std::string map_path = JoinPath(dir, "special_tokens_map.json");
  if (PathExists(map_path)) CollectTokens(ReadJson(map_path), &tokens, &special);
  const std::string tok_json = JoinPath(dir, "tokenizer.json");
  if (PathExists(tok_json)) {
    // Only its added_tokens: the vocabulary and merges are skipped while parsing.
    nlohmann::json tj;
    try {
      tj = nlohmann::json::parse(ReadFile(tok_json), [](int depth,
                                                        nlohmann::json::parse_event_t event,
                                                        nlohmann::json& v) {
        return !(depth == 1 && event == nlohmann::json::parse_event_t::key && v != "added_tokens");
      });
    } catch (const nlohmann::json::exception& e) {
      throw InvalidArgument(tok_json + ": not valid JSON (" + e.what() + ")");
    }
    if (tj.is_object() && tj.contains("added_tokens") && tj["added_tokens"].is_array()) {
      for (const auto& t : tj["added_tokens"]) {
        if (t.is_object() && t.value("special", false)) {
          if (auto s = TokenString(t)) AddSpecial(*s, &special);
        }
      }
    }
  }
  return FromSource(source, name, tokens, std::move(special));
}

RenderedChat ChatTemplate::Render(const nlohmann::ordered_json& messages,
                                  bool add_generation_prompt,
                                  const nlohmann::ordered_json& extra) const {
  CheckChatMessages(messages, "messages");
  jinja::Dict context;
  for (const auto& [k, v] : tokens_.items()) {
    context.Set(jinja::Value::String(k), jinja::Value::FromJson(v, false));
  }
  context.Set(jinja::Value::String("tools"), jinja::Value::None());
  context.Set(jinja::Value::String("documents"), jinja::Value::None());
  if (extra.is_object()) {
    for (const auto& [k, v] : extra.items()) {
      context.Set(jinja::Value::String(k), jinja::Value::FromJson(v, false));
    }
  }
  context.Set(jinja::Value::String("messages"), jinja::Value::FromJson(messages, true));
  context.Set(jinja::Value::String("add_generation_prompt"),
              jinja::Value::Bool(add_generation_prompt));
  jinja::Text out = template_.Render(jinja::Value::MakeDict(std::move(context)));
  return RenderedChat{std::move(out.s), std::move(out.untrusted)};
}

std::vector<int64_t> ChatTemplate::Encode(const Tokenizer& tokenizer,
                                          const RenderedChat& rendered) const {
  EncodeOptions plain;
  plain.allow_special = false;
  plain.add_special_tokens = false;
  EncodeOptions special;
  special.allow_special = true;
  special.add_special_tokens = false;
  std::map<std::string, std::optional<int64_t>> ids;  // spelling -> id (nullopt: not one token)
  auto id_of = [&](const std::string& s) -> std::optional<int64_t> {
    auto it = ids.find(s);
    if (it != ids.end()) return it->second;
    std::vector<int64_t> v = tokenizer.Encode(s, special);
    std::optional<int64_t> id;
    if (v.size() == 1 && tokenizer.IsSpecial(v[0])) id = v[0];
    ids[s] = id;
    return id;
  };

  const std::string& text = rendered.text;
  std::vector<int64_t> out;
  size_t last = 0, pos = 0, range = 0;
  auto flush = [&](size_t end) {
    if (end > last) {
      std::vector<int64_t> v =
          tokenizer.Encode(std::string_view(text).substr(last, end - last), plain);
      out.insert(out.end(), v.begin(), v.end());
    }
  };
  while (pos < text.size()) {
    while (range < rendered.untrusted.size() && rendered.untrusted[range].second <= pos) ++range;
    if (range < rendered.untrusted.size() && rendered.untrusted[range].first <= pos) {
      pos = rendered.untrusted[range].second;  // message content: never a special token
      continue;
    }
    const size_t trusted_end =
        range < rendered.untrusted.size() ? rendered.untrusted[range].first : text.size();
    bool matched = false;
    for (const std::string& s : special_tokens_) {
      if (pos + s.size() > trusted_end || text.compare(pos, s.size(), s) != 0) continue;
      const std::optional<int64_t> id = id_of(s);
      if (!id) continue;
      flush(pos);
      out.push_back(*id);
      pos += s.size();
      last = pos;
      matched = true;
      break;
    }
    if (!matched) ++pos;
  }
  flush(text.size());
  return out;
}

std::string ChatTemplate::token(const std::string& key) const {
  auto it = tokens_.find(key);
  if (it == tokens_.end() || !it->is_string()) return "";
  return it->get<std::string>();
}

void CheckChatMessages(const nlohmann::ordered_json& messages, const std::string& source) {
  if (!messages.is_array()) {
    throw InvalidArgument(source +
                          ": the messages must be a JSON list of {\"role\", \"content\"} "
                          "objects");
  }
  for (size_t k = 0; k < messages.size(); ++k) {
    const auto& m = messages[k];
    const std::string where = source + ": message " + std::to_string(k);
    if (!m.is_object()) throw InvalidArgument(where + " is not an object");
    if (!m.contains("role") || !m["role"].is_string()) {
      throw InvalidArgument(where + " has no \"role\" string");
    }
    if (!m.contains("content")) throw InvalidArgument(where + " has no \"content\"");
  }
}

nlohmann::ordered_json ReadChatMessages(const std::string& path) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(ReadFile(path));
  } catch (const nlohmann::ordered_json::exception& e) {
    throw InvalidArgument(path + ": not valid JSON (" + e.what() + ")");
  }
  CheckChatMessages(j, path);
  return j;
}

}  // namespace stip
