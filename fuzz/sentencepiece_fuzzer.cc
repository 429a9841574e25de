// libFuzzer target: the SentencePiece tokenizer wrapper (common/tokenizer/
// sentencepiece_tokenizer.cc: special-token splitting, byte-fallback decoding)
// with the demo model's real tokenizer.model (models/kjv-llama), on arbitrary
// text and arbitrary id sequences. The class is linked in directly here (the
// daemons load it as a module, sentencepiece_loader.cc); no LibTorch or gRPC
// protobuf is in this process, so there is no clash to avoid.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/tokenizer/sentencepiece_tokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "fuzz/tokenizer_checks.h"

namespace {

const stip::Tokenizer& Sp() {
  static const std::unique_ptr<stip::Tokenizer> t = stip::SentencePieceTokenizer::FromFile(
      std::string(STIP_SOURCE_DIR) + "/models/kjv-llama/tokenizer.model",
      std::string(STIP_SOURCE_DIR) + "/models/kjv-llama/tokenizer_config.json");
  return *t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const stip::Tokenizer& tok = Sp();
  const uint8_t mode = data[0];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  stip::EncodeOptions o;
  o.allow_special = mode & 1;
  o.add_special_tokens = mode & 2;
  try {
    std::vector<int64_t> ids = tok.Encode(text, o);
    stip::fuzz::CheckInVocabulary(tok, ids);
    tok.Decode(ids, mode & 8);
  } catch (const stip::Error&) {
  }
  stip::fuzz::CheckDecodingArbitraryIds(tok, stip::fuzz::IdsFromBytes(data, size, mode), mode);
  return 0;
}
