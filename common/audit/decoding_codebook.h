// Attack 6: the decoding codebook. In generation the client feeds the token it
// picked from o' back as the next x'. With greedy decoding that token is
// argmax(o), which sits at index argmax(o') of the permuted logits; the next
// step's x' names the token (vocabulary matching, attack 4, or a recovered p,
// attack 3). Each generated token therefore reveals one entry of p_c: p_c[j] =
// token. Once an index is in the codebook the observer reads that token straight
// off o', without looking at x' at all.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/audit/server_view.h"
#include "common/keys/permutation.h"

namespace stip {

// One decode step as the server sees it: the index of the largest permuted
// logit and the token of the next x' (as the observer decoded it).
struct CodebookObservation {
  int64_t logit_index = 0;
  int64_t next_token = 0;
};

struct DecodingCodebook {
  std::vector<int64_t> p_c;            // learnt entries: p_c[j] = token, -1 where unknown
  std::vector<int64_t> entries_after;  // distinct entries known after each observation
  int64_t entries = 0;
  int64_t correct = 0;      // entries equal to the true p_c
  int64_t seen_before = 0;  // observations whose index was already in the codebook
};

// Builds the codebook from observations in order; `true_p_c` scores it.
DecodingCodebook BuildDecodingCodebook(const std::vector<CodebookObservation>& observations,
                                       const Permutation& true_p_c);

// The observations of every generation in `view`, the next token taken from
// `decoded` (per generation, one id per x' row).
std::vector<CodebookObservation> ObserveDecoding(const ServerView& view,
                                                 const std::vector<std::vector<int64_t>>& decoded);

nlohmann::ordered_json DecodingCodebookJson(const DecodingCodebook& book, int64_t vocab_size);

// Attack 6 with x' decoded by vocabulary matching (`decoded`).
nlohmann::ordered_json AuditDecodingCodebook(const AuditSubject& subject, const ServerView& view,
                                             const std::vector<std::vector<int64_t>>& decoded);

}  // namespace stip
