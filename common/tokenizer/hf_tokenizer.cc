// The tokenizer.json loader and the assembled pipeline (hf_tokenizer.h).
#include "common/tokenizer/hf_tokenizer.h"

#include <algorithm>

#include "common/error.h"
#include "common/tokenizer/internal.h"

namespace stip {

namespace ti = tokenizer_internal;
namespace tp = tokenizer_pipeline;
using json = nlohmann::json;

namespace tokenizer_pipeline {
std::unique_ptr<Model> MakeModel(const json& j, const std::string& source) {
  if (!j.is_object()) throw InvalidArgument(source + ": \"model\" must be an object");
  std::string type;
  if (j.contains("type") && j["type"].is_string()) {
    type = j["type"].get<std::string>();
  } else if (j.contains("merges")) {
    type = "BPE";
  } else if (j.contains("vocab") && j["vocab"].is_array()) {
    type = "Unigram";
  } else if (j.contains("continuing_subword_prefix")) {
    type = "WordPiece";
  }
  if (type == "BPE") return MakeBpeModel(j, source);
  if (type == "WordPiece") return MakeWordPieceModel(j, source);
  if (type == "Unigram") return MakeUnigramModel(j, source);
  throw Unimplemented(source + ": model type \"" + type +
                      "\" is not supported (BPE, WordPiece, Unigram are)");
}
}  // namespace tokenizer_pipeline

namespace {

// The ids Hugging Face gives added tokens when it loads them (it does not
// take the file's): the model's id of a token it has, else the next id after
// the vocabulary and the added tokens so far. A repeated text is dropped.
// (Files written by Hugging Face agree with this; others get what it gives.)
std::vector<tp::AddedToken> AssignIds(std::vector<tp::AddedToken> tokens, const tp::Model& model) {
  std::vector<tp::AddedToken> out;
  std::unordered_map<std::string, int64_t> seen;
  const int64_t model_size = model.size();
  std::optional<int64_t> max_id;
  for (tp::AddedToken& t : tokens) {
    if (seen.count(t.content)) continue;
    if (auto id = model.TokenToId(t.content)) {
      t.id = *id;
    } else if (max_id && (*max_id >= model_size || model_size == 0)) {
      t.id = *max_id + 1;
    } else {
      t.id = model_size;
    }
    max_id = std::max(max_id.value_or(t.id), t.id);
    seen.emplace(t.content, t.id);
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace

std::unique_ptr<HfTokenizer> HfTokenizer::FromTokenizerJson(const std::string& path,
                                                            const std::string& config_path) {
  return FromTokenizerJsonText(ti::ReadFile(path), path, config_path);
}

std::unique_ptr<HfTokenizer> HfTokenizer::FromTokenizerJsonText(const std::string& text,
                                                                const std::string& path,
                                                                const std::string& config_path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw InvalidArgument(path + ": malformed JSON: " + e.what());
  }
  if (!j.is_object()) throw InvalidArgument(path + ": expected a JSON object");
  std::unique_ptr<HfTokenizer> tok(new HfTokenizer());
  try {
    auto get = [&](const char* key) {
      auto it = j.find(key);
      return it == j.end() ? json() : *it;
    };
    if (!j.contains("model")) throw InvalidArgument(path + ": missing \"model\"");
    tok->model_ = tp::MakeModel(j["model"], path);
    tok->normalizer_ = tp::MakeNormalizer(get("normalizer"), path);
    tok->pre_tokenizer_ = tp::MakePreTokenizer(get("pre_tokenizer"), path);
    tok->post_processor_ = tp::MakePostProcessor(get("post_processor"), path);
    tok->decoder_ = tp::MakeDecoder(get("decoder"), path);
    tok->added_.Build(AssignIds(tp::ReadAddedTokens(get("added_tokens"), path), *tok->model_),
                      tok->normalizer_.get());
    const json truncation = get("truncation"), padding = get("padding");
    (void)truncation;  // (truncation and padding are the caller's business)
    (void)padding;
  } catch (const json::exception& e) {
    throw InvalidArgument(path + ": malformed tokenizer.json: " + e.what());
  } catch (const std::logic_error& e) {  // (e.g. std::stoi on a template's type id)
    throw InvalidArgument(path + ": malformed tokenizer.json: " + e.what());
  }
  tok->Finish(config_path);
  return tok;
}

std::unique_ptr<HfTokenizer> HfTokenizer::FromBertVocab(const std::string& vocab_path,
                                                        const std::string& config_path) {
  ti::TokenizerConfig config;
  if (!config_path.empty()) config = ti::ReadTokenizerConfig(config_path);
  const std::string text = ti::ReadFile(vocab_path);
  std::vector<std::string> vocab;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    // transformers' load_vocab: token.rstrip("\n"); every line is a token.
    ti::CheckUtf8(line, vocab_path + ":" + std::to_string(vocab.size() + 1));
    vocab.push_back(line);
  }
  if (vocab.empty()) throw InvalidArgument(vocab_path + ": the vocabulary is empty");
  const std::string unk = config.unk_token.value_or("[UNK]");
  const std::string cls = config.cls_token.value_or("[CLS]");
  const std::string sep = config.sep_token.value_or("[SEP]");
  const std::string pad = config.pad_token.value_or("[PAD]");
  const std::string mask = config.mask_token.value_or("[MASK]");

  std::unique_ptr<HfTokenizer> tok(new HfTokenizer());
  const bool lower = config.do_lower_case.value_or(true);
  tok->normalizer_ = tp::MakeBertNormalizer(true, config.tokenize_chinese_chars.value_or(true),
                                            config.strip_accents, lower);
  tok->pre_tokenizer_ = tp::MakeBertPreTokenizer();
  tok->model_ = tp::MakeWordPiece(vocab, unk, "##", 100, vocab_path);
  auto id_of = [&](const std::string& t) -> int64_t {
    auto id = tok->model_->TokenToId(t);
    if (!id) throw InvalidArgument(vocab_path + ": special token \"" + t + "\" is not in it");
    return *id;
  };
  tok->post_processor_ = tp::MakeBertProcessing(id_of(cls), id_of(sep));
  tok->decoder_ = tp::MakeWordPieceDecoder("##", true);
  // The special tokens, as BertTokenizerFast adds them (not normalized).
  std::vector<tp::AddedToken> added;
  for (const std::string& t : {pad, unk, cls, sep, mask}) {
    if (std::any_of(added.begin(), added.end(), [&](const auto& a) { return a.content == t; })) {
      continue;
    }
    tp::AddedToken a;
    a.id = id_of(t);
    a.content = t;
    a.special = true;
    a.normalized = false;
    added.push_back(a);
  }
  for (const auto& t : config.added_tokens_decoder) {
    if (std::any_of(added.begin(), added.end(), [&](const auto& a) { return a.id == t.id; })) {
      continue;
    }
    tp::AddedToken a;
    a.id = t.id;
    a.content = t.content;
    a.special = t.special;
    a.normalized = !t.special;
    added.push_back(a);
  }
  tok->added_.Build(std::move(added), tok->normalizer_.get());
  tok->Finish(config_path);
  return tok;
}

void HfTokenizer::Finish(const std::string& config_path) {
  vocab_size_ = model_->size();
  for (const auto& a : added_.tokens()) vocab_size_ = std::max(vocab_size_, a.id + 1);

  // What add_special_tokens puts around one sequence.
  std::vector<int64_t> prefix, suffix;
  if (post_processor_) {
    std::vector<tp::Encoding> e(1);
    e[0].ids = {-1};
    e[0].type_ids = {0};
    post_processor_->Process(&e, true);
    const auto& ids = e[0].ids;
    auto it = std::find(ids.begin(), ids.end(), -1);
    prefix.assign(ids.begin(), it);
    if (it != ids.end()) suffix.assign(it + 1, ids.end());
    for (int64_t id : ids) {
      if (id != -1 && (id < 0 || id >= vocab_size_ || !IdValid(id))) {
        throw InvalidArgument("post_processor token id " + std::to_string(id) +
                              " is not in the vocabulary");
      }
    }
  }

  // bos/eos: tokenizer_config.json, else the post-processor's, else GPT-2's.
  ti::TokenizerConfig config;
  if (!config_path.empty()) config = ti::ReadTokenizerConfig(config_path);
  auto role = [&](const char* name, const std::optional<std::string>& token) {
    if (!token) return;
    if (auto id = TokenToId(*token)) special_roles_[name] = *id;
  };
  role("bos", config.bos_token);
  role("eos", config.eos_token);
  role("unk", config.unk_token);
  role("pad", config.pad_token);
  role("cls", config.cls_token);
  role("sep", config.sep_token);
  role("mask", config.mask_token);
  if (!config_path.empty()) {
    if (config.bos_token) bos_id_ = TokenToId(*config.bos_token);
    if (config.eos_token) eos_id_ = TokenToId(*config.eos_token);
  } else {
    if (prefix.size() == 1) bos_id_ = prefix[0];
    if (suffix.size() == 1) eos_id_ = suffix[0];
    if (!bos_id_ && !eos_id_) {
      const tp::AddedToken* t = added_.ByContent("<|endoftext|>");
      if (t && t->special) bos_id_ = eos_id_ = t->id;
    }
  }
  if (bos_id_ && !special_roles_.count("bos")) special_roles_["bos"] = *bos_id_;
  if (eos_id_ && !special_roles_.count("eos")) special_roles_["eos"] = *eos_id_;
}

bool HfTokenizer::IdValid(int64_t id) const {
  return added_.ById(id) != nullptr || model_->IdToToken(id) != nullptr;
}

std::optional<int64_t> HfTokenizer::TokenToId(const std::string& token) const {
  if (const tp::AddedToken* t = added_.ByContent(token)) return t->id;
  return model_->TokenToId(token);
}

std::optional<int64_t> HfTokenizer::SpecialTokenId(std::string_view role) const {
  auto it = special_roles_.find(role);
  if (it == special_roles_.end()) return std::nullopt;
  return it->second;
}

bool HfTokenizer::IsSpecial(int64_t id) const {
  const tp::AddedToken* t = added_.ById(id);
  return t && t->special;
}

void HfTokenizer::EncodeSequence(std::string_view text, bool allow_special,
                                 std::vector<int64_t>* ids) const {
  ti::CheckUtf8(text, "text to encode");
  std::vector<tp::AddedVocabulary::Split> raw;
  if (added_.HasMatchable(false, allow_special)) {
    raw = added_.FindSplits(text, false, allow_special);
  } else if (!text.empty()) {
    raw.push_back({0, text.size(), std::nullopt});
  }
  const bool match_normalized = added_.HasMatchable(true, allow_special);
  std::vector<tp::Piece> pieces;
  for (const auto& s : raw) {
    if (s.id) {
      ids->push_back(*s.id);
      continue;
    }
    std::string normalized(text.substr(s.start, s.end - s.start));
    if (normalizer_) normalizer_->Normalize(&normalized);
    if (normalized.empty()) continue;
    std::vector<tp::AddedVocabulary::Split> parts;
    if (match_normalized) {
      parts = added_.FindSplits(normalized, true, allow_special);
    } else {
      parts.push_back({0, normalized.size(), std::nullopt});
    }
    for (const auto& p : parts) {
      if (p.id) {
        ids->push_back(*p.id);
        continue;
      }
      pieces.clear();
      if (p.start == 0 && p.end == normalized.size()) {
        pieces.push_back({std::move(normalized), s.start == 0, false});
      } else {
        pieces.push_back(
            {normalized.substr(p.start, p.end - p.start), s.start == 0 && p.start == 0, false});
      }
      if (pre_tokenizer_) pre_tokenizer_->PreTokenize(&pieces);
      for (const tp::Piece& piece : pieces) model_->Tokenize(piece, ids);
    }
  }
}

std::vector<int64_t> HfTokenizer::Encode(std::string_view text,
                                         const EncodeOptions& options) const {
  return EncodePair(text, std::nullopt, options).ids;
}

TokenizedPair HfTokenizer::EncodePair(std::string_view a, std::optional<std::string_view> b,
                                      const EncodeOptions& options) const {
  std::vector<tp::Encoding> e(b ? 2 : 1);
  EncodeSequence(a, options.allow_special, &e[0].ids);
  e[0].type_ids.assign(e[0].ids.size(), 0);
  if (b) {
    EncodeSequence(*b, options.allow_special, &e[1].ids);
    e[1].type_ids.assign(e[1].ids.size(), 1);
  }
  if (post_processor_) post_processor_->Process(&e, options.add_special_tokens);
  tp::DefaultProcess(&e);
  return {std::move(e[0].ids), std::move(e[0].type_ids)};
}

std::string HfTokenizer::Decode(const std::vector<int64_t>& ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    if (const tp::AddedToken* t = added_.ById(id)) {
      if (!(skip_special && t->special)) tokens.push_back(t->content);
      continue;
    }
    const std::string* token = model_->IdToToken(id);
    if (!token) {
      throw InvalidArgument("cannot decode unknown token id " + std::to_string(id) +
                            " (vocabulary size " + std::to_string(vocab_size_) + ")");
    }
    tokens.push_back(*token);
  }
  std::string out;
  if (decoder_) {
    decoder_->DecodeChain(&tokens);
    for (const std::string& t : tokens) out += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
  }
  return out;
}

}  // namespace stip
