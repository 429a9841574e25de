// libFuzzer target: the byte-level BPE tokenizer (common/tokenizer/
// bpe_tokenizer.cc) with the demo model's real vocabulary (models/kjv-gpt2),
// on arbitrary text (what a user types into the client) and arbitrary id
// sequences (what a model may generate). Checks, besides the sanitizers:
//  - byte-level BPE is lossless: Decode(Encode(text)) == text for any text
//    that is valid UTF-8 (special tokens off);
//  - ids from Encode are inside the vocabulary;
//  - Decode of arbitrary ids either throws stip::Error or returns bytes, and
//    the stream decoder never emits half a UTF-8 character.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/tokenizer/internal.h"
#include "common/tokenizer/tokenizer.h"
#include "fuzz/tokenizer_checks.h"

namespace {

const stip::Tokenizer& Bpe() {
  static const std::unique_ptr<stip::Tokenizer> t =
      stip::Tokenizer::FromDirectory(std::string(STIP_SOURCE_DIR) + "/models/kjv-gpt2");
  return *t;
}

bool ValidUtf8(const std::string& s) {
  return stip::tokenizer_internal::FindInvalidUtf8(s) == std::string_view::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const stip::Tokenizer& tok = Bpe();
  const uint8_t mode = data[0];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);

  stip::EncodeOptions plain;
  plain.add_special_tokens = false;
  std::vector<int64_t> ids;
  try {
    ids = tok.Encode(text, plain);
  } catch (const stip::Error&) {
    if (ValidUtf8(text)) abort();  // valid text must always encode
    ids.clear();
  }
  stip::fuzz::CheckInVocabulary(tok, ids);
  if (ValidUtf8(text) && tok.Decode(ids) != text) abort();  // byte-level BPE loses nothing

  stip::EncodeOptions special;
  special.allow_special = mode & 1;
  special.add_special_tokens = mode & 2;
  try {
    stip::fuzz::CheckInVocabulary(tok, tok.Encode(text, special));
  } catch (const stip::Error&) {
  }

  stip::fuzz::CheckDecodingArbitraryIds(tok, stip::fuzz::IdsFromBytes(data, size, mode), mode);
  return 0;
}
