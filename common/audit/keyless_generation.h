// Attack 7 / the paper's Table 4: the transformed checkpoint used without the
// keys. Whoever holds only the server's weights feeds plaintext embeddings
// (E[ids]; the embedding table is public to every user) and reads o' as if it
// were o. The paper shows the text is meaningless; here the greedy tokens are
// compared position by position with the keyed generation (which equals the
// plain model's: `stip-developer verify`).
#pragma once

#include <nlohmann/json.hpp>
#include <vector>

#include "common/audit/server_view.h"
#include "common/tokenizer/tokenizer.h"

namespace stip {

struct KeylessResult {
  int64_t positions = 0;  // generated positions compared
  int64_t agreeing = 0;
  std::vector<std::vector<int64_t>> keyless_ids;  // prompt + keyless continuation, per prompt
};

// Greedy generations of `view.generations[i].prompt` through the transformed
// weights without keys, compared with `view.generations[i].ids`.
KeylessResult GenerateWithoutKeys(const AuditSubject& subject, const ServerView& view,
                                  int max_new_tokens);

// `tokenizer` (may be null) renders the first prompt's two continuations.
nlohmann::ordered_json AuditKeylessGeneration(const AuditSubject& subject, const ServerView& view,
                                              int max_new_tokens, const Tokenizer* tokenizer);

}  // namespace stip
