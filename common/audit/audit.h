// `stip-developer audit`: what the cloud could learn from one deployment of a
// model. Transforms the model with the given (or fresh) keys, takes the
// server's view (server_view.h) and runs each attack of this directory with
// the attacker knowledge it assumes stated beside its result:
//   1 distance_correlation   2 key_space          3 known_plaintext
//   4 vocabulary_matching    5 base_weight_matching
//   6 decoding_codebook      7 keyless_generation (the paper's Table 4)
// The result is one JSON object (audit_report.h renders it as Markdown with
// plots). No key material is ever part of it.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/audit/base_weight_matching.h"
#include "common/audit/distance_correlation.h"
#include "common/keys/model_keys.h"

namespace stip {

struct AuditOptions {
  std::string model_dir;
  std::vector<std::string> prompts;  // texts; empty: DefaultAuditPrompts()
  int max_new_tokens = 32;
  DistanceCorrelationOptions distance_correlation;
  BaseWeightOptions base_weights;                          // base_weights.base_dir: --base
  std::string keys_origin = "fresh keys from the CSPRNG";  // for the report (never the keys)
  bool progress = true;  // on stderr: a bar on a terminal, else one line per step
};

// A few Bible-like sentences (the demo models were trained on the KJV).
std::vector<std::string> DefaultAuditPrompts();

// One prompt per non-empty line of a text file.
std::vector<std::string> LoadAuditPrompts(const std::string& path);

nlohmann::ordered_json RunAudit(const AuditOptions& options, ModelKeys keys);

}  // namespace stip
