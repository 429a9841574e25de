#include "common/audit/decoding_codebook.h"

#include "common/error.h"

namespace stip {

DecodingCodebook BuildDecodingCodebook(const std::vector<CodebookObservation>& observations,
                                       const Permutation& true_p_c) {
  DecodingCodebook book;
  book.p_c.assign(true_p_c.size(), -1);
  for (const CodebookObservation& o : observations) {
    if (o.logit_index < 0 || o.logit_index >= static_cast<int64_t>(book.p_c.size())) {
      throw InvalidArgument("decoding codebook: logit index outside the vocabulary");
    }
    int64_t& entry = book.p_c[static_cast<size_t>(o.logit_index)];
    if (entry >= 0) {
      book.seen_before++;
    } else {
      book.entries++;
    }
    entry = o.next_token;  // the latest observation wins
    book.entries_after.push_back(book.entries);
  }
  for (size_t j = 0; j < book.p_c.size(); ++j) book.correct += book.p_c[j] == true_p_c[j];
  return book;
}

std::vector<CodebookObservation> ObserveDecoding(const ServerView& view,
                                                 const std::vector<std::vector<int64_t>>& decoded) {
  std::vector<CodebookObservation> obs;
  for (size_t g = 0; g < view.generations.size(); ++g) {
    const ObservedGeneration& gen = view.generations[g];
    const int64_t prompt = static_cast<int64_t>(gen.prompt.size());
    at::Tensor argmax = gen.o_prime.argmax(-1);
    for (int64_t s = 0; s < gen.o_prime.size(0); ++s) {
      // Decode step s returned o'_s; the client's pick arrives as x' row prompt + s.
      const int64_t row = prompt + s;
      if (row >= static_cast<int64_t>(decoded[g].size())) break;
      obs.push_back({argmax[s].item<int64_t>(), decoded[g][static_cast<size_t>(row)]});
    }
  }
  return obs;
}

nlohmann::ordered_json DecodingCodebookJson(const DecodingCodebook& book, int64_t vocab_size) {
  nlohmann::ordered_json curve = nlohmann::ordered_json::array();
  const auto n = static_cast<int64_t>(book.entries_after.size());
  for (int64_t k = 1; k <= n; k *= 2) {
    curve.push_back(
        {{"tokens", k}, {"p_c_entries", book.entries_after[static_cast<size_t>(k - 1)]}});
  }
  if (n > 0 && (n & (n - 1)) != 0) {
    curve.push_back({{"tokens", n}, {"p_c_entries", book.entries_after.back()}});
  }
  const int64_t known = book.entries;
  return {{"generated_tokens_observed", n},
          {"p_c_entries_recovered", known},
          {"p_c_entries_correct", book.correct},
          {"p_c_fraction_recovered", static_cast<double>(book.correct) / vocab_size},
          {"entry_accuracy", known ? static_cast<double>(book.correct) / known : 0.0},
          {"tokens_read_straight_off_o_prime", book.seen_before},
          {"share_read_straight_off_o_prime", n ? static_cast<double>(book.seen_before) / n : 0.0},
          {"curve", curve}};
}

nlohmann::ordered_json AuditDecodingCodebook(const AuditSubject& subject, const ServerView& view,
                                             const std::vector<std::vector<int64_t>>& decoded) {
  DecodingCodebook book = BuildDecodingCodebook(ObserveDecoding(view, decoded), subject.keys.p_c);
  nlohmann::ordered_json j = {
      {"attacker_knowledge",
       "the server's o' and x' of greedy generations, with x' decoded by vocabulary matching "
       "(embedding table from a client bundle); no key"}};
  j.update(DecodingCodebookJson(book, subject.config.vocab_size));
  return j;
}

}  // namespace stip
