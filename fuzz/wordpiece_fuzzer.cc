// libFuzzer target: BERT's WordPiece pipeline (BertNormalizer through ICU,
// BertPreTokenizer, WordPiece, [CLS] a [SEP] b [SEP]) with the demo model's
// real vocab.txt (models/bert-kjv), on arbitrary text and id sequences.
// Checks, besides the sanitizers: valid text always encodes, ids lie inside
// the vocabulary, a pair has one type id per id (0s then 1s), and decoding
// arbitrary ids throws stip::Error or returns bytes.
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

const stip::Tokenizer& Bert() {
  static const std::unique_ptr<stip::Tokenizer> t =
      stip::Tokenizer::FromDirectory(std::string(STIP_SOURCE_DIR) + "/models/bert-kjv");
  return *t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const stip::Tokenizer& tok = Bert();
  const uint8_t mode = data[0];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const bool valid = stip::tokenizer_internal::FindInvalidUtf8(text) == std::string_view::npos;
  stip::EncodeOptions options;
  options.allow_special = mode & 1;
  options.add_special_tokens = mode & 2;
  try {
    stip::fuzz::CheckInVocabulary(tok, tok.Encode(text, options));
  } catch (const stip::Error&) {
    if (valid) abort();  // valid text must always encode
  }
  if (valid) {
    // A pair: the halves of the text, cut at a character boundary.
    size_t half = text.size() / 2;
    while (half > 0 && (static_cast<unsigned char>(text[half]) & 0xC0) == 0x80) --half;
    const stip::TokenizedPair pair =
        tok.EncodePair(text.substr(0, half), std::string_view(text).substr(half), options);
    stip::fuzz::CheckInVocabulary(tok, pair.ids);
    if (pair.ids.size() != pair.type_ids.size()) abort();
    for (size_t i = 1; i < pair.type_ids.size(); ++i) {
      if (pair.type_ids[i] < pair.type_ids[i - 1]) abort();  // 0s then 1s
    }
  }
  stip::fuzz::CheckDecodingArbitraryIds(tok, stip::fuzz::IdsFromBytes(data, size, mode), mode);
  return 0;
}
