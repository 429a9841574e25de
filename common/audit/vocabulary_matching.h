// Attack 4: vocabulary matching. Whoever holds the embedding table (every
// client bundle holds it) reads the tokens behind the x' the server receives:
// sorting a row removes any permutation of its entries, so sort(x') equals
// sort(E[token] (+ position embedding)) for exactly the token that was sent.
// The paper's §5.3 assumes permuting activations instead of one-hot inputs
// avoids this; the embedding table makes the two equivalent.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/audit/server_view.h"

namespace stip {

// The token behind each row of x_prime [N, d]: the nearest (L2) sorted row of
// token_embedding [V, d] (+ position_embedding[positions[i]] when that is
// defined: learned positions, GPT-2). `positions` has N entries. Candidates
// are first shortlisted by the permutation-invariant moments sum x^k (k <= 3),
// which expand into matrix products over the whole vocabulary.
std::vector<int64_t> MatchVocabulary(const at::Tensor& x_prime,
                                     const std::vector<int64_t>& positions,
                                     const at::Tensor& token_embedding,
                                     const at::Tensor& position_embedding);

// Decodes every x' of `view` (per generation, row = position).
std::vector<std::vector<int64_t>> MatchVocabulary(const AuditSubject& subject,
                                                  const ServerView& view);

// Recovery rates over the prompts' tokens and the generated tokens.
nlohmann::ordered_json AuditVocabularyMatching(const AuditSubject& subject, const ServerView& view,
                                               const std::vector<std::vector<int64_t>>& decoded);

}  // namespace stip
