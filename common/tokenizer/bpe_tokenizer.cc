#include "common/tokenizer/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <functional>
#include <memory>

#include "common/error.h"
#include "common/tokenizer/internal.h"
#include "common/tokenizer/pipeline.h"

namespace stip {
namespace {

namespace ti = tokenizer_internal;
namespace tp = tokenizer_pipeline;
using json = nlohmann::json;

constexpr size_t kCacheCapacity = 10000;  // words (Hugging Face's BPE cache size)
constexpr size_t kMaxCachedWord = 256;    // bytes
constexpr int64_t kMaxTokenId = int64_t{1} << 24;

// Unicode White_Space, which is what `\s` means in Oniguruma (the regex engine
// of Hugging Face tokenizers). PCRE2's `\s` with PCRE2_UCP also matches U+180E.
constexpr char kWhiteSpace[] =
    "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";

// GPT-2's pre-tokenizer regex,
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// with \s spelled out as above.
std::string Gpt2Pattern() {
  const std::string ws = kWhiteSpace;
  return "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" + ws + "\\p{L}\\p{N}]+|[" + ws +
         "]+(?![^" + ws + "])|[" + ws + "]+";
}

// Bytes of a byte-level token: each character through the inverse byte map;
// characters outside it are kept as their UTF-8 (as Hugging Face does).
std::string ByteLevelDecode(const std::string& token) {
  std::string out;
  size_t i = 0;
  while (i < token.size()) {
    const ti::Utf8Step step = ti::NextUtf8(std::string_view(token).substr(i));
    if (step.kind != ti::Utf8Step::kValid) {
      out.append(token, i, step.length);
      i += step.length;
      continue;
    }
    const int byte = tp::ByteOfByteLevelChar(ti::DecodeUtf8(token.data() + i, step.length));
    if (byte >= 0) {
      out.push_back(static_cast<char>(byte));
    } else {
      out.append(token, i, step.length);
    }
    i += step.length;
  }
  return out;
}

// Length of the Unicode White_Space character at the start of `s`, or 0.
size_t WhitespaceAt(std::string_view s) {
  if (s.empty()) return 0;
  const ti::Utf8Step step = ti::NextUtf8(s);
  if (step.kind != ti::Utf8Step::kValid) return 0;
  const uint32_t cp = ti::DecodeUtf8(s.data(), step.length);
  const bool ws = (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
                  cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
                  cp == 0x202F || cp == 0x205F || cp == 0x3000;
  return ws ? step.length : 0;
}

// Length of the White_Space character that ends `s`, or 0.
size_t WhitespaceBefore(std::string_view s) {
  for (size_t k = 1; k <= 3 && k <= s.size(); ++k) {
    if (WhitespaceAt(s.substr(s.size() - k)) == k) return k;
  }
  return 0;
}

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct PcreCodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct PcreMatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

std::string PcreErrorMessage(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof(buf)) < 0) return "error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

// Reads a token -> id object (tokenizer.json's model.vocab or vocab.json).
void ReadVocab(const json& vocab, const std::string& source,
               std::unordered_map<std::string, int32_t>* token_to_id,
               std::vector<std::string>* id_to_token) {
  if (!vocab.is_object()) throw InvalidArgument(source + ": the vocabulary must be a JSON object");
  if (vocab.empty()) throw InvalidArgument(source + ": the vocabulary is empty");
  token_to_id->reserve(vocab.size());
  for (const auto& [token, value] : vocab.items()) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
        value.get<int64_t>() >= kMaxTokenId) {
      throw InvalidArgument(source + ": the id of token \"" + token +
                            "\" is not an integer in [0, " + std::to_string(kMaxTokenId) + ")");
    }
    const auto id = value.get<int32_t>();
    (*token_to_id)[token] = id;
    if (static_cast<size_t>(id) >= id_to_token->size()) id_to_token->resize(id + 1);
    (*id_to_token)[id] = token;
  }
}

std::pair<std::string, std::string> SplitMerge(const std::string& line, const std::string& where) {
  const size_t space = line.find(' ');
  if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos || space == 0 ||
      space + 1 == line.size()) {
    throw InvalidArgument(where + ": a merge must be two tokens separated by one space, got \"" +
                          line + "\"");
  }
  return {line.substr(0, space), line.substr(space + 1)};
}

std::string TypeOf(const json& j) {
  if (j.is_object()) {
    auto it = j.find("type");
    if (it != j.end() && it->is_string()) return it->get<std::string>();
  }
  return j.dump();
}

}  // namespace

// ---------------------------------------------------------------------------
// BpeSpecialTokens

BpeSpecialTokens BpeSpecialTokens::FromConfigFile(const std::string& path) {
  const ti::TokenizerConfig config = ti::ReadTokenizerConfig(path);
  BpeSpecialTokens s;
  s.bos = config.bos_token;
  s.eos = config.eos_token;
  s.unk = config.unk_token;
  s.pad = config.pad_token;
  s.add_bos = config.add_bos_token.value_or(false);
  s.add_eos = config.add_eos_token.value_or(false);
  for (const auto& t : config.added_tokens_decoder) s.added.push_back({t.id, t.content, t.special});
  return s;
}

BpeSpecialTokens BpeSpecialTokens::Gpt2Defaults() {
  BpeSpecialTokens s;
  s.bos = s.eos = s.unk = "<|endoftext|>";
  s.add_missing = false;
  return s;
}

BpeSpecialTokens BpeSpecialTokens::Special(const std::vector<std::string>& tokens) {
  BpeSpecialTokens s;
  for (const auto& t : tokens) s.added.push_back({std::nullopt, t, true});
  return s;
}

// ---------------------------------------------------------------------------
// Loading

BpeTokenizer::BpeTokenizer() { std::fill(std::begin(byte_id_), std::end(byte_id_), -1); }

BpeTokenizer::~BpeTokenizer() { pcre2_code_free(static_cast<pcre2_code*>(regex_)); }

std::unique_ptr<BpeTokenizer> BpeTokenizer::FromTokenizerJson(const std::string& path,
                                                              const std::string& config_path) {
  const json j = ti::ReadJsonFile(path);
  try {
    return FromTokenizerJsonImpl(j, path, config_path);
  } catch (const json::exception& e) {
    throw InvalidArgument(path + ": malformed tokenizer.json: " + e.what());
  }
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::FromTokenizerJsonImpl(const json& j,
                                                                  const std::string& path,
                                                                  const std::string& config_path) {
  if (!j.is_object()) throw InvalidArgument(path + ": expected a JSON object");
  auto model_it = j.find("model");
  if (model_it == j.end() || !model_it->is_object()) {
    throw InvalidArgument(path + ": missing \"model\" object");
  }
  const json& model = *model_it;
  const std::string type = model.value("type", model.contains("merges") ? "BPE" : "");
  if (type != "BPE") {
    throw Unimplemented(path + ": tokenizer model type \"" + type +
                        "\" is not supported (only byte-level BPE)");
  }
  auto non_empty = [&](const char* key) {
    auto it = model.find(key);
    return it != model.end() && !it->is_null() && !(it->is_string() && it->empty());
  };
  if (model.value("byte_fallback", false) || non_empty("continuing_subword_prefix") ||
      non_empty("end_of_word_suffix")) {
    throw Unimplemented(path +
                        ": BPE with byte_fallback, continuing_subword_prefix or "
                        "end_of_word_suffix is not supported (only byte-level BPE)");
  }
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    throw Unimplemented(path + ": normalizer " + TypeOf(j["normalizer"]) + " is not supported");
  }

  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer());

  // Pre-tokenizer: ByteLevel (GPT-2 regex), or Sequence[Split(regex), ByteLevel(no regex)].
  const json pre = j.value("pre_tokenizer", json());
  auto byte_level = [&](const json& p, bool default_regex) {
    tok->add_prefix_space_ = p.value("add_prefix_space", true);
    return p.value("use_regex", default_regex);
  };
  const std::string pre_type = pre.is_object() ? pre.value("type", "") : "";
  if (pre_type == "ByteLevel") {
    if (byte_level(pre, true)) tok->SetPattern(Gpt2Pattern(), path);
  } else if (pre_type == "Sequence" && pre.contains("pretokenizers") &&
             pre["pretokenizers"].is_array() && pre["pretokenizers"].size() == 2 &&
             pre["pretokenizers"][0].value("type", "") == "Split" &&
             pre["pretokenizers"][1].value("type", "") == "ByteLevel" &&
             !byte_level(pre["pretokenizers"][1], true)) {
    if (tok->add_prefix_space_) {
      throw Unimplemented(path + ": ByteLevel add_prefix_space after Split is not supported");
    }
    const json& split = pre["pretokenizers"][0];
    const json pattern = split.value("pattern", json());
    if (split.value("behavior", "") != "Isolated" || split.value("invert", false) ||
        !pattern.is_object()) {
      throw Unimplemented(path + ": Split pre-tokenizer " + split.dump() + " is not supported");
    }
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      tok->SetPattern(pattern["Regex"].get<std::string>(), path);
    } else if (pattern.contains("String") && pattern["String"].is_string()) {
      tok->SetPattern("\\Q" + pattern["String"].get<std::string>() + "\\E", path);
    } else {
      throw InvalidArgument(path + ": bad Split pattern " + pattern.dump());
    }
  } else {
    throw Unimplemented(path + ": pre-tokenizer " + (pre.is_null() ? "null" : pre.dump(-1)) +
                        " is not supported (only ByteLevel)");
  }

  if (!model.contains("vocab")) throw InvalidArgument(path + ": model has no \"vocab\"");
  ReadVocab(model["vocab"], path + ": model.vocab", &tok->token_to_id_, &tok->id_to_token_);

  std::vector<std::pair<std::string, std::string>> merges;
  auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) {
    throw InvalidArgument(path + ": model.merges must be an array");
  }
  merges.reserve(merges_it->size());
  for (size_t i = 0; i < merges_it->size(); ++i) {
    const json& m = (*merges_it)[i];
    const std::string where = path + ": model.merges[" + std::to_string(i) + "]";
    if (m.is_string()) {
      merges.push_back(SplitMerge(m.get<std::string>(), where));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      throw InvalidArgument(where + ": a merge must be \"a b\" or [\"a\", \"b\"], got " + m.dump());
    }
  }

  auto unk = model.find("unk_token");
  if (unk != model.end() && unk->is_string()) {
    auto it = tok->token_to_id_.find(unk->get<std::string>());
    if (it != tok->token_to_id_.end()) tok->unk_id_ = it->second;
  }
  tok->ignore_merges_ = model.value("ignore_merges", false);

  auto added = j.find("added_tokens");
  if (added != j.end() && !added->is_null()) {
    if (!added->is_array()) throw InvalidArgument(path + ": added_tokens must be an array");
    for (const json& a : *added) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string()) {
        throw InvalidArgument(path + ": malformed added token " + a.dump());
      }
      tok->AddAddedToken(a["id"].get<int64_t>(), a["content"].get<std::string>(),
                         a.value("special", false), path, a.value("lstrip", false),
                         a.value("rstrip", false));
    }
  }

  tok->Finish(merges, {}, path);

  // Post-processor: which tokens add_special_tokens adds.
  std::function<void(const json&)> post = [&](const json& p) {
    if (p.is_null()) return;
    const std::string ptype = TypeOf(p);
    auto id_of = [&](const std::string& token) -> int64_t {
      auto id = tok->TokenToId(token);
      if (!id) throw InvalidArgument(path + ": post_processor token \"" + token + "\" is unknown");
      return *id;
    };
    if (ptype == "ByteLevel") return;
    if (ptype == "Sequence" && p.contains("processors") && p["processors"].is_array()) {
      for (const json& q : p["processors"]) post(q);
    } else if ((ptype == "RobertaProcessing" || ptype == "BertProcessing") && p.contains("cls") &&
               p["cls"].is_array() && !p["cls"].empty() && p["cls"][0].is_string() &&
               p.contains("sep") && p["sep"].is_array() && !p["sep"].empty() &&
               p["sep"][0].is_string()) {
      tok->prefix_ids_ = {id_of(p["cls"][0].get<std::string>())};
      tok->suffix_ids_ = {id_of(p["sep"][0].get<std::string>())};
    } else if (ptype == "TemplateProcessing" && p.contains("single") && p["single"].is_array()) {
      tok->prefix_ids_.clear();
      tok->suffix_ids_.clear();
      bool seen_sequence = false;
      for (const json& piece : p["single"]) {
        if (piece.contains("Sequence")) {
          seen_sequence = true;
        } else if (piece.contains("SpecialToken") && piece["SpecialToken"].contains("id")) {
          const std::string name = piece["SpecialToken"]["id"].get<std::string>();
          std::vector<int64_t> ids;
          auto st = p.find("special_tokens");
          if (st != p.end() && st->contains(name) && (*st)[name].contains("ids")) {
            for (const json& id : (*st)[name]["ids"]) ids.push_back(id.get<int64_t>());
          } else {
            ids.push_back(id_of(name));
          }
          auto& dst = seen_sequence ? tok->suffix_ids_ : tok->prefix_ids_;
          dst.insert(dst.end(), ids.begin(), ids.end());
        } else {
          throw InvalidArgument(path + ": malformed TemplateProcessing piece " + piece.dump());
        }
      }
    } else {
      throw Unimplemented(path + ": post_processor " + ptype + " is not supported");
    }
  };
  try {
    post(j.value("post_processor", json()));
  } catch (const json::exception& e) {
    throw InvalidArgument(path + ": malformed post_processor: " + e.what());
  }
  for (int64_t id : tok->prefix_ids_) tok->Decode({id});  // validates the ids
  for (int64_t id : tok->suffix_ids_) tok->Decode({id});

  // bos/eos: tokenizer_config.json, else the post-processor's, else GPT-2's.
  if (!config_path.empty()) {
    const ti::TokenizerConfig config = ti::ReadTokenizerConfig(config_path);
    if (config.bos_token) tok->bos_id_ = tok->TokenToId(*config.bos_token);
    if (config.eos_token) tok->eos_id_ = tok->TokenToId(*config.eos_token);
  } else {
    if (tok->prefix_ids_.size() == 1) tok->bos_id_ = tok->prefix_ids_[0];
    if (tok->suffix_ids_.size() == 1) tok->eos_id_ = tok->suffix_ids_[0];
    if (!tok->bos_id_ && !tok->eos_id_) {
      auto it = tok->added_by_content_.find("<|endoftext|>");
      if (it != tok->added_by_content_.end() && tok->added_[it->second].special) {
        tok->bos_id_ = tok->eos_id_ = tok->added_[it->second].id;
      }
    }
  }
  return tok;
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::FromVocabAndMerges(const std::string& vocab_path,
                                                               const std::string& merges_path,
                                                               const BpeSpecialTokens& specials) {
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer());
  try {
    ReadVocab(ti::ReadJsonFile(vocab_path), vocab_path, &tok->token_to_id_, &tok->id_to_token_);
  } catch (const json::exception& e) {
    throw InvalidArgument(vocab_path + ": malformed vocabulary: " + e.what());
  }

  const std::string text = ti::ReadFile(merges_path);
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<size_t> lines;
  size_t line_no = 0, pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    merges.push_back(SplitMerge(line, merges_path + ":" + std::to_string(line_no)));
    lines.push_back(line_no);
  }

  // Special tokens.
  std::vector<BpeSpecialTokens::Added> all = specials.added;
  for (const auto* t : {&specials.bos, &specials.eos, &specials.unk, &specials.pad}) {
    if (*t) all.push_back({std::nullopt, **t, true});
  }
  int64_t next_id = static_cast<int64_t>(tok->id_to_token_.size());
  for (const auto& a : all) {
    if (tok->added_by_content_.count(a.content)) continue;
    int64_t id;
    auto it = tok->token_to_id_.find(a.content);
    if (a.id) {
      id = *a.id;
    } else if (it != tok->token_to_id_.end()) {
      id = it->second;
    } else if (specials.add_missing) {
      id = next_id++;
    } else {
      continue;
    }
    next_id = std::max(next_id, id + 1);
    tok->AddAddedToken(id, a.content, a.special, vocab_path);
  }
  if (specials.unk) {
    auto it = tok->token_to_id_.find(*specials.unk);
    if (it != tok->token_to_id_.end()) tok->unk_id_ = it->second;
  }

  tok->SetPattern(Gpt2Pattern(), merges_path);
  tok->Finish(merges, lines, merges_path);

  if (specials.bos) tok->bos_id_ = tok->TokenToId(*specials.bos);
  if (specials.eos) tok->eos_id_ = tok->TokenToId(*specials.eos);
  if (specials.add_bos && tok->bos_id_) tok->prefix_ids_ = {*tok->bos_id_};
  if (specials.add_eos && tok->eos_id_) tok->suffix_ids_ = {*tok->eos_id_};
  return tok;
}

void BpeTokenizer::AddAddedToken(int64_t id, const std::string& content, bool special,
                                 const std::string& source, bool lstrip, bool rstrip) {
  if (id < 0 || id >= kMaxTokenId) {
    throw InvalidArgument(source + ": added token \"" + content + "\" has invalid id " +
                          std::to_string(id));
  }
  if (content.empty()) {
    throw InvalidArgument(source + ": added token " + std::to_string(id) + " is empty");
  }
  ti::CheckUtf8(content, source + ": added token " + std::to_string(id));
  auto by_id = added_by_id_.find(id);
  if (by_id != added_by_id_.end()) {
    AddedToken& t = added_[by_id->second];
    added_by_content_.erase(t.content);
    t = {id, content, special, lstrip, rstrip};
    added_by_content_[content] = by_id->second;
    return;
  }
  added_by_id_[id] = added_.size();
  added_by_content_[content] = added_.size();
  added_.push_back({id, content, special, lstrip, rstrip});
}

void BpeTokenizer::SetPattern(const std::string& pattern, const std::string& source) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  std::unique_ptr<pcre2_code, PcreCodeDeleter> code(
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr));
  if (!code) {
    throw InvalidArgument(source + ": cannot compile the pre-tokenizer regex /" + pattern +
                          "/: " + PcreErrorMessage(error) + " at offset " + std::to_string(offset));
  }
  pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE);  // optional speed-up; falls back if absent
  pcre2_code_free(static_cast<pcre2_code*>(regex_));
  regex_ = code.release();
  pattern_ = pattern;
}

void BpeTokenizer::Finish(const std::vector<std::pair<std::string, std::string>>& merges,
                          const std::vector<size_t>& merge_lines, const std::string& source) {
  // Merge table.
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    // (Plain references, not a structured binding: lambdas may capture
    // those only from C++20 on, and clang enforces it.)
    const std::string& a = merges[rank].first;
    const std::string& b = merges[rank].second;
    auto where = [&] {
      return source +
             (merge_lines.empty() ? ": merge #" + std::to_string(rank + 1)
                                  : ":" + std::to_string(merge_lines[rank])) +
             " (\"" + a + " " + b + "\")";
    };
    auto ia = token_to_id_.find(a);
    auto ib = token_to_id_.find(b);
    auto iab = token_to_id_.find(a + b);
    if (ia == token_to_id_.end() || ib == token_to_id_.end()) {
      throw InvalidArgument(where() + ": token \"" + (ia == token_to_id_.end() ? a : b) +
                            "\" is not in the vocabulary");
    }
    if (iab == token_to_id_.end()) {
      throw InvalidArgument(where() + ": merged token \"" + a + b + "\" is not in the vocabulary");
    }
    // A repeated merge takes its last rank, as in Hugging Face and GPT-2.
    merges_[PairKey(ia->second, ib->second)] = {static_cast<int32_t>(rank), iab->second};
  }

  // Byte symbols.
  for (int b = 0; b < 256; ++b) {
    auto it = token_to_id_.find(tp::ByteLevelChar(static_cast<unsigned char>(b)));
    byte_id_[b] = it == token_to_id_.end() ? -1 : it->second;
  }

  // Decoding tables: model tokens, then added tokens on top.
  int64_t size = static_cast<int64_t>(id_to_token_.size());
  for (const auto& a : added_) size = std::max(size, a.id + 1);
  id_to_bytes_.assign(size, std::string());
  id_valid_.assign(size, false);
  id_special_.assign(size, false);
  for (const auto& [token, id] : token_to_id_) {
    id_to_bytes_[id] = ByteLevelDecode(token);
    id_valid_[id] = true;
  }
  added_by_first_byte_.assign(256, {});
  has_non_special_added_ = false;
  for (size_t i = 0; i < added_.size(); ++i) {
    const AddedToken& a = added_[i];
    id_to_bytes_[a.id] = a.content;
    id_valid_[a.id] = true;
    id_special_[a.id] = a.special;
    if (!a.special) has_non_special_added_ = true;
    added_by_first_byte_[static_cast<unsigned char>(a.content[0])].push_back(i);
  }
  for (auto& list : added_by_first_byte_) {
    std::stable_sort(list.begin(), list.end(), [&](size_t x, size_t y) {
      return added_[x].content.size() > added_[y].content.size();
    });
  }
}

// ---------------------------------------------------------------------------
// Encoding

std::optional<int64_t> BpeTokenizer::TokenToId(const std::string& token) const {
  auto a = added_by_content_.find(token);
  if (a != added_by_content_.end()) return added_[a->second].id;
  auto it = token_to_id_.find(token);
  if (it != token_to_id_.end()) return it->second;
  return std::nullopt;
}

std::vector<int64_t> BpeTokenizer::Encode(std::string_view text,
                                          const EncodeOptions& options) const {
  ti::CheckUtf8(text, "text to encode");
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + prefix_ids_.size() + suffix_ids_.size() + 1);
  if (options.add_special_tokens) ids = prefix_ids_;

  const bool match_added = options.allow_special ? !added_.empty() : has_non_special_added_;
  if (!match_added) {
    EncodeSegment(text, &ids);
  } else {
    // Added tokens are split out first, leftmost-longest.
    size_t segment = 0, pos = 0;
    while (pos < text.size()) {
      const AddedToken* found = nullptr;
      for (size_t i : added_by_first_byte_[static_cast<unsigned char>(text[pos])]) {
        const AddedToken& a = added_[i];
        if ((a.special && !options.allow_special) ||
            text.compare(pos, a.content.size(), a.content) != 0) {
          continue;
        }
        found = &a;
        break;
      }
      if (!found) {
        ++pos;
        continue;
      }
      size_t start = pos, end = pos + found->content.size();
      if (found->lstrip) {
        for (size_t k;
             start > segment && (k = WhitespaceBefore(text.substr(segment, start - segment)));) {
          start -= k;
        }
      }
      if (found->rstrip) {
        for (size_t k; end < text.size() && (k = WhitespaceAt(text.substr(end)));) end += k;
      }
      EncodeSegment(text.substr(segment, start - segment), &ids);
      ids.push_back(found->id);
      pos = segment = end;
    }
    EncodeSegment(text.substr(segment), &ids);
  }

  if (options.add_special_tokens) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

void BpeTokenizer::EncodeSegment(std::string_view segment, std::vector<int64_t>* ids) const {
  if (segment.empty()) return;
  std::string with_space;
  if (add_prefix_space_ && segment[0] != ' ') {
    with_space = " " + std::string(segment);
    segment = with_space;
  }
  if (!regex_) {
    EncodeWord(segment, ids);
    return;
  }
  auto* code = static_cast<const pcre2_code*>(regex_);
  std::unique_ptr<pcre2_match_data, PcreMatchDataDeleter> md(
      pcre2_match_data_create_from_pattern(code, nullptr));
  if (!md) throw ResourceExhausted("out of memory for regex match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(segment.data());
  size_t gap = 0, search = 0;  // start of the unmatched text; where to search next
  while (search < segment.size()) {
    const int rc =
        pcre2_match(code, subject, segment.size(), search, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      throw Internal("pre-tokenizer regex /" + pattern_ + "/ failed: " + PcreErrorMessage(rc));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const size_t start = ov[0], end = ov[1];
    if (end <= start) {  // empty match: not a piece; move on one character
      if (start >= segment.size()) break;
      search = start + ti::NextUtf8(segment.substr(start)).length;
      continue;
    }
    if (start > gap) EncodeWord(segment.substr(gap, start - gap), ids);
    EncodeWord(segment.substr(start, end - start), ids);
    gap = search = end;
  }
  if (gap < segment.size()) EncodeWord(segment.substr(gap), ids);
}

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<int64_t>* ids) const {
  if (ignore_merges_) {
    std::string token;
    for (unsigned char b : word) token += tp::ByteLevelChar(b);
    auto it = token_to_id_.find(token);
    if (it != token_to_id_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  if (word.size() == 1) {  // no merges possible
    const int32_t id = byte_id_[static_cast<unsigned char>(word[0])];
    if (id >= 0) {
      ids->push_back(id);
    } else if (unk_id_) {
      ids->push_back(*unk_id_);
    }
    return;
  }
  const bool cacheable = word.size() <= kMaxCachedWord;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> merged;
  MergeWord(word, &merged);
  ids->insert(ids->end(), merged.begin(), merged.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity) cache_.emplace(std::move(key), std::move(merged));
  }
}

void BpeTokenizer::MergeWord(std::string_view word, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> syms;
  syms.reserve(word.size());
  for (unsigned char b : word) {
    int32_t id = byte_id_[b];
    if (id < 0) {
      if (!unk_id_) continue;  // Hugging Face drops symbols it cannot map
      id = *unk_id_;
    }
    const auto n = static_cast<int32_t>(syms.size());
    syms.push_back({id, n - 1, n + 1, true});
  }
  if (syms.empty()) return;
  syms.back().next = -1;

  // Candidate merges ordered by (rank, position): the lowest rank first and,
  // on ties, the leftmost, as Hugging Face's BPE does.
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::vector<Candidate> heap;
  auto push = [&](int32_t pos) {
    const Symbol& s = syms[pos];
    if (s.next < 0) return;
    auto it = merges_.find(PairKey(s.id, syms[s.next].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, pos, it->second.new_id});
    std::push_heap(heap.begin(), heap.end(), std::greater<Candidate>());
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) push(i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<Candidate>());
    const Candidate c = heap.back();
    heap.pop_back();
    Symbol& s = syms[c.pos];
    if (!s.alive || s.next < 0) continue;
    // Skip stale candidates (a neighbour changed since it was queued).
    auto it = merges_.find(PairKey(s.id, syms[s.next].id));
    if (it == merges_.end() || it->second.new_id != c.new_id || it->second.rank != c.rank) {
      continue;
    }
    Symbol& right = syms[s.next];
    s.id = c.new_id;
    right.alive = false;
    s.next = right.next;
    if (s.next >= 0) syms[s.next].prev = c.pos;
    if (s.prev >= 0) push(s.prev);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) out->push_back(syms[i].id);
}

// ---------------------------------------------------------------------------
// Decoding

std::string BpeTokenizer::Decode(const std::vector<int64_t>& ids, bool skip_special) const {
  std::string out;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size() || !id_valid_[id]) {
      throw InvalidArgument("cannot decode unknown token id " + std::to_string(id) +
                            " (vocabulary size " + std::to_string(vocab_size()) + ")");
    }
    if (skip_special && id_special_[id]) continue;
    out += id_to_bytes_[id];
  }
  return out;
}

bool BpeTokenizer::IsSpecial(int64_t id) const {
  return id >= 0 && id < vocab_size() && id_special_[id];
}

}  // namespace stip
