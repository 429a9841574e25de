#include "common/audit/known_plaintext.h"

#include "common/arch/architecture.h"
#include "common/audit/decoding_codebook.h"
#include "common/audit/vocabulary_matching.h"
#include "common/client/client_permuter.h"
#include "common/error.h"
#include "common/transform/transform_rules.h"

namespace stip {

ColumnMatch RecoverPermutationByColumnMatching(const at::Tensor& x, const at::Tensor& x_prime) {
  if (x.dim() != 2 || x.sizes() != x_prime.sizes()) {
    throw InvalidArgument("column matching: x and x' must be matrices of one shape");
  }
  // dist[j, i] = |column j of x' - column i of x|.
  at::Tensor dist =
      at::cdist(x_prime.t().to(at::kDouble).contiguous(), x.t().to(at::kDouble).contiguous());
  auto [best, arg] = dist.min(1);
  at::Tensor ties = dist.le(best.unsqueeze(1)).sum(1).gt(1);
  ColumnMatch m;
  m.p.resize(static_cast<size_t>(x.size(1)));
  for (int64_t j = 0; j < x.size(1); ++j) m.p[static_cast<size_t>(j)] = arg[j].item<int64_t>();
  m.ambiguous = ties.sum().item<int64_t>();
  return m;
}

Permutation InverseOfGuess(const Permutation& guess) {
  Permutation inv(guess.size(), 0);
  for (size_t j = guess.size(); j-- > 0;) {
    const int64_t i = guess[j];
    if (i >= 0 && static_cast<size_t>(i) < guess.size())
      inv[static_cast<size_t>(i)] = static_cast<int64_t>(j);
  }
  return inv;
}

double RecoveryRate(const Permutation& guess, const Permutation& truth) {
  if (truth.empty() || guess.size() != truth.size()) return 0;
  int64_t ok = 0;
  for (size_t i = 0; i < truth.size(); ++i) ok += guess[i] == truth[i];
  return static_cast<double>(ok) / static_cast<double>(truth.size());
}

nlohmann::ordered_json AuditKnownPlaintext(const AuditSubject& subject, const ServerView& view) {
  using json = nlohmann::ordered_json;
  const ModelConfig& c = subject.config;
  const ObservedGeneration& known = view.generations.at(0);
  const int64_t prompt_len = static_cast<int64_t>(known.prompt.size());

  // How many known tokens it takes.
  json by_tokens = json::array();
  int64_t tokens_needed = -1;
  for (int64_t t = 1; t <= prompt_len; ++t) {
    ColumnMatch m =
        RecoverPermutationByColumnMatching(known.x.narrow(0, 0, t), known.x_prime.narrow(0, 0, t));
    const double rate = RecoveryRate(m.p, subject.keys.p);
    by_tokens.push_back(
        {{"known_tokens", t}, {"p_recovery_rate", rate}, {"ambiguous", m.ambiguous}});
    if (rate == 1.0) {
      tokens_needed = t;
      break;
    }
  }
  ColumnMatch m = RecoverPermutationByColumnMatching(known.x.narrow(0, 0, prompt_len),
                                                     known.x_prime.narrow(0, 0, prompt_len));
  const double p_rate = RecoveryRate(m.p, subject.keys.p);

  // Every other x' of the instance, un-permuted with the recovered p.
  const Permutation p_inv = InverseOfGuess(m.p);
  at::Tensor table = subject.plain.at(TensorName(c, Role::kTokenEmbedding));
  at::Tensor positions;
  if (HasRole(c, Role::kPositionEmbedding)) {
    positions = subject.plain.at(TensorName(c, Role::kPositionEmbedding));
  }
  int64_t rows = 0, exact = 0, tokens_ok = 0;
  std::vector<std::vector<int64_t>> decoded(view.generations.size());
  for (size_t g = 0; g < view.generations.size(); ++g) {
    const ObservedGeneration& gen = view.generations[g];
    at::Tensor x_hat = PermuteHidden(gen.x_prime, p_inv);
    // The recovered x names its token by a plain nearest-row lookup (the
    // sorted lookup of vocabulary matching would not need p at all).
    std::vector<int64_t> pos(static_cast<size_t>(x_hat.size(0)));
    for (size_t t = 0; t < pos.size(); ++t) pos[t] = static_cast<int64_t>(t);
    at::Tensor cand_rows = x_hat;
    if (positions.defined()) cand_rows = x_hat - positions.narrow(0, 0, x_hat.size(0));
    at::Tensor ids = at::cdist(cand_rows, table).argmin(1);
    for (int64_t t = 0; t < x_hat.size(0); ++t) {
      decoded[g].push_back(ids[t].item<int64_t>());
      if (g == 0) continue;  // the known generation itself is not counted
      rows++;
      exact += (x_hat[t] - gen.x[t]).abs().max().item<double>() == 0.0;
      tokens_ok += decoded[g].back() == gen.ids[static_cast<size_t>(t)];
    }
  }

  // p_c through a tied head: lm_head' = E[p_c][:, p] -> rows of E.
  json tied = nullptr;
  if (c.tie_word_embeddings) {
    ModelConfig untied = view.config;
    at::Tensor head = view.weights.at(TensorName(untied, Role::kLmHead));
    at::Tensor aligned = PermuteHidden(head, p_inv);
    at::Tensor idx = at::cdist(aligned, table).argmin(1);
    Permutation p_c(static_cast<size_t>(c.vocab_size));
    for (int64_t j = 0; j < c.vocab_size; ++j) p_c[static_cast<size_t>(j)] = idx[j].item<int64_t>();
    tied = RecoveryRate(p_c, subject.keys.p_c);
  }
  // p_c through decoding: the codebook with x' decoded by the recovered p.
  DecodingCodebook book = BuildDecodingCodebook(ObserveDecoding(view, decoded), subject.keys.p_c);

  // Null where there is no other request to read.
  auto rate = [](int64_t a, int64_t b) -> json {
    if (b == 0) return nullptr;
    return static_cast<double>(a) / static_cast<double>(b);
  };
  return {
      {"attacker_knowledge",
       "the server's x' plus the plaintext x of one request (generation 0's prompt: " +
           std::to_string(prompt_len) +
           " tokens); the embedding table to name tokens and, for a tied head, p_c"},
      {"known_tokens", prompt_len},
      {"p_recovery_rate", p_rate},
      {"ambiguous_columns", m.ambiguous},
      {"known_tokens_needed_for_full_p", tokens_needed < 0 ? json(nullptr) : json(tokens_needed)},
      {"recovery_by_known_tokens", by_tokens},
      {"other_x_prime_rows", rows},
      {"other_hidden_states_recovered_exactly", rate(exact, rows)},
      {"other_tokens_recovered", rate(tokens_ok, rows)},
      {"p_c_recovery_rate_via_tied_head", tied},
      {"p_c_via_tied_head_note",
       c.tie_word_embeddings ? "lm_head' = E[p_c][:, p]: un-permute its columns, match rows of E"
                             : "not applicable: the model's head is untied (see base-weight "
                               "matching and the decoding codebook)"},
      {"p_c_entries_via_decoding", book.correct},
      {"p_c_fraction_via_decoding", static_cast<double>(book.correct) / c.vocab_size},
  };
}

}  // namespace stip
