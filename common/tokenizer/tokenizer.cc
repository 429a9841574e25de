#include "common/tokenizer/tokenizer.h"

#include <sys/stat.h>

#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/tokenizer/bpe_tokenizer.h"
#include "common/tokenizer/hf_tokenizer.h"
#include "common/tokenizer/internal.h"

namespace stip {

namespace ti = tokenizer_internal;

std::unique_ptr<Tokenizer> Tokenizer::FromDirectory(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0)
    throw NotFound("tokenizer directory " + dir + " does not exist");
  if (!S_ISDIR(st.st_mode)) throw NotFound("tokenizer directory " + dir + " is not a directory");
  const std::string tokenizer_json = ti::JoinPath(dir, "tokenizer.json");
  const std::string vocab_json = ti::JoinPath(dir, "vocab.json");
  const std::string merges_txt = ti::JoinPath(dir, "merges.txt");
  const std::string sp_model = ti::JoinPath(dir, "tokenizer.model");
  const std::string config_json = ti::JoinPath(dir, "tokenizer_config.json");
  const std::string config = ti::FileExists(config_json) ? config_json : "";

  if (ti::FileExists(tokenizer_json)) {
    try {
      return HfTokenizer::FromTokenizerJson(tokenizer_json, config);
    } catch (const Error& e) {
      // A tokenizer.json with a component we do not support is fine when the
      // SentencePiece model is there too.
      if (e.code() != ErrorCode::kUnimplemented || !ti::FileExists(sp_model)) throw;
      return LoadSentencePieceTokenizer(sp_model, config);
    }
  }
  if (ti::FileExists(vocab_json) && ti::FileExists(merges_txt)) {
    return BpeTokenizer::FromVocabAndMerges(vocab_json, merges_txt,
                                            config.empty()
                                                ? BpeSpecialTokens::Gpt2Defaults()
                                                : BpeSpecialTokens::FromConfigFile(config));
  }
  if (ti::FileExists(sp_model)) return LoadSentencePieceTokenizer(sp_model, config);
  const std::string vocab_txt = ti::JoinPath(dir, "vocab.txt");
  if (ti::FileExists(vocab_txt)) return HfTokenizer::FromBertVocab(vocab_txt, config);
  if (ti::FileExists(vocab_json) || ti::FileExists(merges_txt)) {
    throw NotFound("tokenizer directory " + dir + " has only one of vocab.json and merges.txt");
  }
  throw NotFound(
      "no tokenizer in " + dir +
      ": looked for tokenizer.json, vocab.json + merges.txt, tokenizer.model, vocab.txt");
}

std::vector<size_t> PositionsOf(const std::vector<int64_t>& ids, int64_t id) {
  std::vector<size_t> out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] == id) out.push_back(i);
  }
  return out;
}

}  // namespace stip
