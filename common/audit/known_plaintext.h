// Attack 3: known plaintext (the paper's §5.3 KPA). The server holds x' for
// every request; if it learns the x of one of them (a prompt it can guess,
// the BOS token every LLaMA prompt starts with, a user who colludes) it
// recovers p by matching columns: column j of X' [T, d] equals column p[j] of
// X. Then every x' of that model instance falls, and p_c with it: through a
// tied head (lm_head' = E[p_c][:, p]) or through decoding (attack 6).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <nlohmann/json.hpp>

#include "common/audit/server_view.h"
#include "common/keys/permutation.h"

namespace stip {

struct ColumnMatch {
  Permutation p;          // p[j] = the column of x nearest to column j of x'
  int64_t ambiguous = 0;  // columns of x' with more than one equally near column of x
};

// x [T, d] and x' [T, d] (x' = x[..., p] if they belong together).
ColumnMatch RecoverPermutationByColumnMatching(const at::Tensor& x, const at::Tensor& x_prime);

// inv[guess[j]] = j, where `guess` may repeat an index (the first j wins) and
// miss others (they map to 0): undoes a recovered permutation.
Permutation InverseOfGuess(const Permutation& guess);

// Fraction of entries where `guess` equals `truth`.
double RecoveryRate(const Permutation& guess, const Permutation& truth);

// The known pair is generation 0's prompt; the rest of `view` is what falls.
nlohmann::ordered_json AuditKnownPlaintext(const AuditSubject& subject, const ServerView& view);

}  // namespace stip
