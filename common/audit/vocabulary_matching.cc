#include "common/audit/vocabulary_matching.h"

#include <algorithm>

#include "common/arch/architecture.h"
#include "common/error.h"

namespace stip {

std::vector<int64_t> MatchVocabulary(const at::Tensor& x_prime,
                                     const std::vector<int64_t>& positions,
                                     const at::Tensor& token_embedding,
                                     const at::Tensor& position_embedding) {
  if (x_prime.dim() != 2 || token_embedding.dim() != 2 ||
      x_prime.size(1) != token_embedding.size(1)) {
    throw InvalidArgument("vocabulary matching: x' and the embedding table differ in width");
  }
  const int64_t n = x_prime.size(0), vocab = token_embedding.size(0);
  if (static_cast<int64_t>(positions.size()) != n) {
    throw InvalidArgument("vocabulary matching: one position per row of x' is needed");
  }
  if (n == 0) return {};
  constexpr int64_t kChunk = 256;  // rows at a time: the moment tables are [V, rows]
  if (n > kChunk) {
    std::vector<int64_t> out;
    for (int64_t b = 0; b < n; b += kChunk) {
      const int64_t m = std::min(kChunk, n - b);
      std::vector<int64_t> part =
          MatchVocabulary(x_prime.narrow(0, b, m),
                          std::vector<int64_t>(positions.begin() + b, positions.begin() + b + m),
                          token_embedding, position_embedding);
      out.insert(out.end(), part.begin(), part.end());
    }
    return out;
  }
  const at::Tensor e = token_embedding.to(at::kDouble);
  const at::Tensor x = x_prime.to(at::kDouble);
  // The position vector added to each row's candidates (zero without learned positions).
  at::Tensor q = at::zeros_like(x);
  if (position_embedding.defined()) {
    at::Tensor idx = at::tensor(at::ArrayRef<int64_t>(positions), at::kLong);
    if (idx.min().item<int64_t>() < 0 || idx.max().item<int64_t>() >= position_embedding.size(0)) {
      throw InvalidArgument("vocabulary matching: position past the position table");
    }
    q = position_embedding.to(at::kDouble).index_select(0, idx);
  }
  // Shortlist by the first three moments of the entries, which no permutation
  // changes and which expand into matrix products for every (token, row):
  //   sum (e+q)^k for k = 1, 2, 3.
  const at::Tensor e2 = e * e, q2 = q * q;
  const at::Tensor m1 = e.sum(1).unsqueeze(1) + q.sum(1).unsqueeze(0);  // [V, n]
  const at::Tensor eq = at::mm(e, q.t());
  const at::Tensor m2 = e2.sum(1).unsqueeze(1) + 2 * eq + q2.sum(1).unsqueeze(0);
  const at::Tensor m3 = (e2 * e).sum(1).unsqueeze(1) + 3 * at::mm(e2, q.t()) +
                        3 * at::mm(e, q2.t()) + (q2 * q).sum(1).unsqueeze(0);
  const at::Tensor r1 = x.sum(1), r2 = (x * x).sum(1), r3 = (x * x * x).sum(1);
  auto dist = [](const at::Tensor& m, const at::Tensor& r) {
    const double scale = std::max(1e-30, m.std().item<double>());
    return ((m - r.unsqueeze(0)) / scale).square();
  };
  const at::Tensor score = dist(m1, r1) + dist(m2, r2) + dist(m3, r3);  // [V, n]
  const int64_t k = std::min<int64_t>(32, vocab);
  const at::Tensor shortlist = std::get<1>(score.topk(k, 0, /*largest=*/false)).t();  // [n, k]
  // Then the exact test: sort(x') against sort(E[token] + q) for the shortlist.
  const at::Tensor cand =
      e.index_select(0, shortlist.reshape(-1)).view({n, k, -1}) + q.unsqueeze(1);
  const at::Tensor sorted_cand = std::get<0>(cand.sort(-1));
  const at::Tensor sorted_x = std::get<0>(x.sort(-1)).unsqueeze(1);
  const at::Tensor best = (sorted_cand - sorted_x).square().sum(-1).argmin(1);  // [n]
  const at::Tensor ids = shortlist.gather(1, best.unsqueeze(1)).squeeze(1).contiguous();
  return std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + n);
}

std::vector<std::vector<int64_t>> MatchVocabulary(const AuditSubject& subject,
                                                  const ServerView& view) {
  const ModelConfig& c = subject.config;
  at::Tensor table = subject.plain.at(TensorName(c, Role::kTokenEmbedding));
  at::Tensor positions;
  if (HasRole(c, Role::kPositionEmbedding)) {
    positions = subject.plain.at(TensorName(c, Role::kPositionEmbedding));
  }
  // All generations at once, so that each position's table is sorted once.
  std::vector<at::Tensor> rows;
  std::vector<int64_t> pos;
  for (const ObservedGeneration& g : view.generations) {
    rows.push_back(g.x_prime);
    for (int64_t t = 0; t < g.x_prime.size(0); ++t) pos.push_back(t);
  }
  std::vector<int64_t> all = MatchVocabulary(at::cat(rows, 0), pos, table, positions);
  std::vector<std::vector<int64_t>> out;
  size_t at = 0;
  for (const ObservedGeneration& g : view.generations) {
    const auto n = static_cast<size_t>(g.x_prime.size(0));
    out.emplace_back(all.begin() + static_cast<int64_t>(at),
                     all.begin() + static_cast<int64_t>(at + n));
    at += n;
  }
  return out;
}

nlohmann::ordered_json AuditVocabularyMatching(const AuditSubject& subject, const ServerView& view,
                                               const std::vector<std::vector<int64_t>>& decoded) {
  int64_t prompt_ok = 0, prompt_n = 0, gen_ok = 0, gen_n = 0;
  for (size_t g = 0; g < view.generations.size(); ++g) {
    const ObservedGeneration& gen = view.generations[g];
    for (size_t t = 0; t < decoded[g].size(); ++t) {
      const bool ok = decoded[g][t] == gen.ids[t];
      if (t < gen.prompt.size()) {
        prompt_n++;
        prompt_ok += ok;
      } else {
        gen_n++;
        gen_ok += ok;
      }
    }
  }
  auto rate = [](int64_t a, int64_t b) { return b ? static_cast<double>(a) / b : 0.0; };
  return {{"attacker_knowledge",
           "the server's x' plus the embedding table" +
               std::string(HasRole(subject.config, Role::kPositionEmbedding) ? " and position table"
                                                                             : "") +
               " (in every client bundle: a server that also registers as a user, or any "
               "user who sees the traffic, has it); no key"},
          {"prompt_tokens", prompt_n},
          {"prompt_tokens_recovered", prompt_ok},
          {"prompt_token_recovery_rate", rate(prompt_ok, prompt_n)},
          {"generated_tokens_fed_back", gen_n},
          {"generated_tokens_recovered", gen_ok},
          {"generated_token_recovery_rate", rate(gen_ok, gen_n)},
          {"chance_rate", 1.0 / static_cast<double>(subject.config.vocab_size)}};
}

}  // namespace stip
