// What both tokenizer fuzzers check on arbitrary id sequences (what a model
// may generate): decoding either throws stip::Error or returns, and the
// stream decoder never emits half a UTF-8 character. A failed check aborts
// (libFuzzer keeps the input).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/tokenizer/tokenizer.h"

namespace stip::fuzz {

// Aborts unless every id is inside the vocabulary.
inline void CheckInVocabulary(const Tokenizer& tok, const std::vector<int64_t>& ids) {
  for (int64_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) abort();
  }
}

// The input's bytes after the mode byte as ids, 2 bytes each; with mode & 4,
// shifted so that some are negative (and, unshifted, some are beyond the
// vocabulary anyway).
inline std::vector<int64_t> IdsFromBytes(const uint8_t* data, size_t size, uint8_t mode) {
  std::vector<int64_t> ids;
  for (size_t i = 1; i + 1 < size; i += 2) {
    ids.push_back(static_cast<int64_t>(data[i] | (data[i + 1] << 8)) - (mode & 4 ? 100 : 0));
  }
  return ids;
}

// Decode (skipping special tokens with mode & 8) and the stream decoder on
// arbitrary ids.
inline void CheckDecodingArbitraryIds(const Tokenizer& tok, const std::vector<int64_t>& ids,
                                      uint8_t mode) {
  try {
    tok.Decode(ids, mode & 8);
  } catch (const Error&) {
  }
  StreamDecoder stream(tok);
  try {
    for (int64_t id : ids) {
      const std::string piece = stream.Push(id);
      if (CompleteUtf8Prefix(piece) != piece.size()) abort();
    }
    stream.Flush();
  } catch (const Error&) {
  }
}

}  // namespace stip::fuzz
