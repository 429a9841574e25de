// libFuzzer target: the tokenizer.json loader and pipeline
// (common/tokenizer/hf_tokenizer.cc and the component files it assembles) on
// arbitrary JSON text. Loading must either succeed or throw stip::Error (a
// malformed or unsupported file gets a clear error, never a crash or a hang);
// a loaded tokenizer must encode a fixed set of texts into ids inside its
// vocabulary, encode pairs, and decode arbitrary ids without crashing.
// Seeds: fuzz/corpus/tokenizer_json/ (small files covering every component).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/tokenizer/hf_tokenizer.h"
#include "fuzz/tokenizer_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1 << 16)) return 0;  // (bounded inputs keep each run short)
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::unique_ptr<stip::HfTokenizer> tok;
  try {
    tok = stip::HfTokenizer::FromTokenizerJsonText(text, "fuzz.json");
  } catch (const stip::Error&) {
    return 0;
  }
  static const char* const kTexts[] = {"", "Hello, World! 123 4567",
                                       "  caf\xc3\xa9 na\xc3\xafve\n\n\tx  ",
                                       "\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 <s>[CLS]</s>",
                                       ("\xe2\x96\x81\xe2\x96\x81 a\xe2\x96\x81"
                                        "b")};
  for (const char* t : kTexts) {
    for (int mode = 0; mode < 4; ++mode) {
      stip::EncodeOptions options;
      options.allow_special = mode & 1;
      options.add_special_tokens = mode & 2;
      try {
        const auto ids = tok->Encode(t, options);
        stip::fuzz::CheckInVocabulary(*tok, ids);
        tok->Decode(ids, mode & 1);
        tok->EncodePair(t, "second", options);
      } catch (const stip::Error&) {
        // (e.g. a model without unk for text it cannot cover)
      }
    }
  }
  stip::fuzz::CheckDecodingArbitraryIds(*tok, stip::fuzz::IdsFromBytes(data, size, data[0]),
                                        size ? data[0] : 0);
  return 0;
}
