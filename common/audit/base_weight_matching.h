// Attack 5: base-weight matching. A model fine-tuned from public base weights
// stays close to them; a server that knows the base (the paper's own
// motivating scenario: a developer's fine-tune of an open model) matches the
// transformed checkpoint against it. For each hidden index j, every tensor
// with p on one axis gives a signature that no other permutation can change:
// the sorted entries along its other axis. The nearest base signature names
// p[j]. With p, the head's rows (lm_head' = W[p_c][:, p]) match the base
// head's rows and name p_c.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/audit/server_view.h"
#include "common/keys/permutation.h"

namespace stip {

struct BaseMatch {
  Permutation p;    // guesses (may repeat an index where matching is unsure)
  Permutation p_c;  // empty if the checkpoint has no head
  int tensors_used = 0;
};

// `base`: the public weights (plaintext layout and names of `config`);
// `transformed`: the server checkpoint of a model of the same architecture.
BaseMatch MatchBaseWeights(const ModelConfig& config, const TensorMap& base,
                           const TensorMap& transformed);

// The plaintext model with relative Gaussian noise ||dW|| = drift * ||W|| on
// every tensor (fine-tuning drift, simulated), from a fixed seed.
TensorMap WithDrift(const TensorMap& plain, double drift, uint64_t seed);

struct BaseWeightOptions {
  std::vector<double> drift_levels = {0, 0.001, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0};
  std::string base_dir;  // public base weights of the audited model, if given
  uint64_t seed = 2;
};

// Throws kInvalidArgument unless `base_dir` holds a model of the same family
// and sizes as `config` (checked before the audit starts).
void CheckBaseModel(const ModelConfig& config, const std::string& base_dir);

// Recovery of p and p_c against drift (the audited model as the base, drifted
// copies transformed with the audit's keys), and against `base_dir` if given
// (the audited model transformed as deployed).
nlohmann::ordered_json AuditBaseWeightMatching(const AuditSubject& subject, const ServerView& view,
                                               const BaseWeightOptions& options);

}  // namespace stip
