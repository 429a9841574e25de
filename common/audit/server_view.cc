#include "common/audit/server_view.h"

#include "common/arch/architecture.h"
#include "common/client/client_permuter.h"
#include "common/error.h"
#include "common/format/checkpoint.h"
#include "common/transform/transform_rules.h"

namespace stip {

AuditSubject LoadAuditSubject(const std::string& model_dir, ModelKeys keys) {
  AuditSubject s;
  s.model_dir = model_dir;
  s.config = LoadModelConfig(model_dir);
  if (s.config.encoder) {
    // The attacks (vocabulary matching, known plaintext, keyless generation,
    // decoding codebooks) are written against a causal LM's token embedding
    // and next-token head; encoders need their own (issue 13).
    throw Unimplemented(model_dir + ": audit does not support encoders yet (model_type " +
                        s.config.model_type +
                        "); its attacks assume a causal language model. `verify` and "
                        "`transform` do support it.");
  }
  Checkpoint ckpt = Checkpoint::Open(model_dir);
  CheckpointSource source(ckpt);
  ValidateTensors(s.config, source, /*server_only=*/false);
  ValidateKeys(keys, s.config);
  for (const TensorEntry& e : ExpectedTensors(s.config)) {
    s.plain[e.name] = source.Load(e.name, at::kFloat, at::kCPU);
  }
  s.keys = std::move(keys);
  return s;
}

std::unique_ptr<ClientModel> MakeClientModel(const ModelConfig& config, const TensorMap& plain) {
  MapSource source(plain, "plaintext model");
  return std::make_unique<ClientModel>(config, LoadClientWeights(config, source, LoadOptions{}));
}

std::unique_ptr<ServerModel> MakeServerModel(const ModelConfig& config, const TensorMap& weights) {
  MapSource source(weights, "model in memory");
  LoadOptions load;
  return std::make_unique<ServerModel>(config, LoadServerWeights(config, source, load), load);
}

ServerView MakeServerView(const AuditSubject& subject,
                          const std::vector<std::vector<int64_t>>& prompts, int max_new_tokens) {
  ServerView view;
  MapSource source(subject.plain, "plaintext model");
  view.weights = TransformInMemory(subject.config, source, subject.keys);
  view.config = TransformedConfig(subject.config, subject.keys.instance_id);
  std::unique_ptr<ClientModel> client = MakeClientModel(subject.config, subject.plain);
  std::unique_ptr<ServerModel> server = MakeServerModel(view.config, view.weights);

  for (const auto& prompt : prompts) {
    if (prompt.empty()) throw InvalidArgument("audit: a prompt encodes to no tokens");
    std::vector<at::Tensor> xs, xps, ops;
    GreedyOptions g;
    g.max_new_tokens = max_new_tokens;
    g.eos_ids = subject.config.eos_token_ids;
    g.transform_in = [&](const at::Tensor& x) {
      at::Tensor xp = PermuteHidden(x, subject.keys.p);
      xs.push_back(x.to(at::kFloat));
      xps.push_back(xp.to(at::kFloat));
      return xp;
    };
    g.transform_out = [&](const at::Tensor& o_prime) {
      ops.push_back(o_prime.to(at::kFloat).clone());
      return UnpermuteLogits(o_prime, subject.keys.p_c);
    };
    ObservedGeneration gen;
    gen.prompt = prompt;
    gen.ids = GreedyGenerate(*client, *server, {prompt}, g)[0];
    gen.x = at::cat(xs, 0);
    gen.x_prime = at::cat(xps, 0);
    gen.o_prime = at::stack(ops, 0);
    view.generations.push_back(std::move(gen));
  }
  return view;
}

}  // namespace stip
