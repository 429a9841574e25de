#include "common/audit/keyless_generation.h"

#include <algorithm>

namespace stip {

KeylessResult GenerateWithoutKeys(const AuditSubject& subject, const ServerView& view,
                                  int max_new_tokens) {
  std::unique_ptr<ClientModel> client = MakeClientModel(subject.config, subject.plain);
  std::unique_ptr<ServerModel> server = MakeServerModel(view.config, view.weights);
  KeylessResult r;
  GreedyOptions g;
  g.max_new_tokens = max_new_tokens;
  g.eos_ids = subject.config.eos_token_ids;
  for (const ObservedGeneration& gen : view.generations) {
    std::vector<int64_t> ids = GreedyGenerate(*client, *server, {gen.prompt}, g)[0];
    // Positions the keyed generation produced (it may have stopped at EOS).
    for (size_t t = gen.prompt.size(); t < gen.ids.size(); ++t) {
      r.positions++;
      r.agreeing += t < ids.size() && ids[t] == gen.ids[t];
    }
    r.keyless_ids.push_back(std::move(ids));
  }
  return r;
}

nlohmann::ordered_json AuditKeylessGeneration(const AuditSubject& subject, const ServerView& view,
                                              int max_new_tokens, const Tokenizer* tokenizer) {
  KeylessResult r = GenerateWithoutKeys(subject, view, max_new_tokens);
  nlohmann::ordered_json j = {
      {"attacker_knowledge",
       "the transformed checkpoint and the embedding table, no key: plaintext x in, o' read as o"},
      {"generated_positions", r.positions},
      {"agreeing_positions", r.agreeing},
      {"token_agreement", r.positions ? static_cast<double>(r.agreeing) / r.positions : 0.0},
      {"chance_agreement", 1.0 / static_cast<double>(subject.config.vocab_size)},
  };
  if (tokenizer && !view.generations.empty()) {
    const ObservedGeneration& gen = view.generations[0];
    auto text = [&](const std::vector<int64_t>& ids, size_t from) {
      return tokenizer->Decode(
          std::vector<int64_t>(ids.begin() + static_cast<int64_t>(from), ids.end()),
          /*skip_special=*/true);
    };
    j["example"] = {{"prompt", text(gen.prompt, 0)},
                    {"with_keys", text(gen.ids, gen.prompt.size())},
                    {"without_keys", text(r.keyless_ids[0], gen.prompt.size())}};
  }
  return j;
}

}  // namespace stip
