#include "common/audit/base_weight_matching.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "common/arch/architecture.h"
#include "common/audit/known_plaintext.h"
#include "common/client/client_permuter.h"
#include "common/error.h"
#include "common/format/checkpoint.h"
#include "common/transform/transform_rules.h"

namespace stip {

namespace {

at::Tensor LinearLayout(const at::Tensor& w, Layout layout) {
  return layout == Layout::kConv1D ? w.t() : w;
}

// Rows of `m` sorted: a signature that no permutation of the columns changes.
at::Tensor SortedRows(const at::Tensor& m) { return std::get<0>(m.to(at::kFloat).sort(-1)); }

Permutation ArgminRows(const at::Tensor& cost) {
  at::Tensor arg = cost.argmin(1);
  Permutation out(static_cast<size_t>(cost.size(0)));
  for (int64_t j = 0; j < cost.size(0); ++j) out[static_cast<size_t>(j)] = arg[j].item<int64_t>();
  return out;
}

}  // namespace

BaseMatch MatchBaseWeights(const ModelConfig& config, const TensorMap& base,
                           const TensorMap& transformed) {
  // Which axis of each tensor carries p or p_c follows from the transform
  // rules alone: apply them to marker keys and see where the markers land.
  const ModelKeys marker = GenerateKeys(config, "audit-marker");
  const int64_t d = config.hidden_size;
  at::Tensor cost = at::zeros({d, d}, at::kDouble);
  BaseMatch out;
  const TransformedTensor* head = nullptr;
  std::vector<TransformedTensor> plan = PlanServerTensors(config);
  for (const TransformedTensor& t : plan) {
    // Experts may be reordered: their source is itself secret (skipped).
    if (IsPerExpert(t.role)) continue;
    AxisPermutations perms = PermutationsFor(t, config, marker);
    if (perms.rows == marker.p_c && t.role == Role::kLmHead) head = &t;
    const bool p_on_cols = perms.cols == marker.p;
    const bool p_on_rows = perms.rows == marker.p;
    if (!p_on_cols && !p_on_rows) continue;
    auto b = base.find(t.source_name);
    auto w = transformed.find(t.name);
    if (b == base.end() || w == transformed.end()) continue;
    at::Tensor wb = LinearLayout(b->second, t.layout).to(at::kFloat);
    at::Tensor wt = LinearLayout(w->second, t.layout).to(at::kFloat);
    if (wb.sizes() != wt.sizes()) {
      throw InvalidArgument("base-weight matching: " + t.source_name +
                            " has another shape in the base weights");
    }
    at::Tensor sb, st;  // [d, k] signatures per hidden index
    if (wb.dim() == 1) {
      sb = wb.unsqueeze(1);
      st = wt.unsqueeze(1);
    } else if (p_on_cols) {
      sb = SortedRows(wb.t());
      st = SortedRows(wt.t());
    } else {
      sb = SortedRows(wb);
      st = SortedRows(wt);
    }
    at::Tensor c = at::cdist(st.to(at::kDouble), sb.to(at::kDouble)).pow(2);
    // Each tensor weighs the same: scale by its mean cost.
    const double mean = c.mean().item<double>();
    if (mean > 0) cost += c / mean;
    out.tensors_used++;
  }
  if (out.tensors_used == 0) {
    throw InvalidArgument("base-weight matching: no tensor with the hidden permutation found");
  }
  out.p = ArgminRows(cost);
  if (head) {
    auto b = base.find(head->source_name);
    auto w = transformed.find(head->name);
    if (b != base.end() && w != transformed.end()) {
      // W' = W[p_c][:, p]: undo p with the guess.
      at::Tensor aligned = PermuteHidden(w->second.to(at::kFloat), InverseOfGuess(out.p));
      out.p_c = ArgminRows(at::cdist(aligned, b->second.to(at::kFloat)));
    }
  }
  return out;
}

TensorMap WithDrift(const TensorMap& plain, double drift, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  TensorMap out;
  for (const auto& [name, w] : plain) {
    if (drift == 0) {
      out[name] = w;
      continue;
    }
    const double rms = w.to(at::kDouble).pow(2).mean().sqrt().item<double>();
    out[name] = w + at::randn(w.sizes(), gen, at::kFloat) * (drift * rms);
  }
  return out;
}

void CheckBaseModel(const ModelConfig& c, const std::string& base_dir) {
  ModelConfig bc = LoadModelConfig(base_dir);
  if (bc.hidden_size != c.hidden_size || bc.vocab_size != c.vocab_size ||
      bc.num_layers != c.num_layers || bc.model_type != c.model_type ||
      bc.intermediate_size != c.intermediate_size || bc.num_heads != c.num_heads ||
      bc.num_kv_heads != c.num_kv_heads) {
    throw InvalidArgument(
        base_dir + ": the base model (" + bc.model_type + ", d " + std::to_string(bc.hidden_size) +
        ", vocabulary " + std::to_string(bc.vocab_size) + ", " + std::to_string(bc.num_layers) +
        " layers) does not have the audited model's shape (" + c.model_type + ", d " +
        std::to_string(c.hidden_size) + ", vocabulary " + std::to_string(c.vocab_size) + ", " +
        std::to_string(c.num_layers) + " layers)");
  }
}

nlohmann::ordered_json AuditBaseWeightMatching(const AuditSubject& subject, const ServerView& view,
                                               const BaseWeightOptions& options) {
  using json = nlohmann::ordered_json;
  const ModelConfig& c = subject.config;
  json curve = json::array();
  for (double drift : options.drift_levels) {
    TensorMap deployed = WithDrift(subject.plain, drift, options.seed);
    MapSource source(deployed, "drifted model");
    TensorMap transformed = TransformInMemory(c, source, subject.keys);
    BaseMatch m = MatchBaseWeights(c, subject.plain, transformed);
    curve.push_back({{"drift", drift},
                     {"p_recovery_rate", RecoveryRate(m.p, subject.keys.p)},
                     {"p_c_recovery_rate",
                      m.p_c.empty() ? json(nullptr) : json(RecoveryRate(m.p_c, subject.keys.p_c))},
                     {"tensors_used", m.tensors_used}});
  }
  json given = nullptr;
  if (!options.base_dir.empty()) {
    CheckBaseModel(c, options.base_dir);
    ModelConfig bc = LoadModelConfig(options.base_dir);
    Checkpoint ckpt = Checkpoint::Open(options.base_dir);
    CheckpointSource source(ckpt);
    TensorMap base;
    for (const TensorEntry& e : ExpectedTensors(bc)) {
      if (source.Has(e.name)) base[e.name] = source.Load(e.name, at::kFloat, at::kCPU);
    }
    BaseMatch m = MatchBaseWeights(c, base, view.weights);
    double rel = 0;
    int64_t n = 0;
    for (const auto& [name, w] : subject.plain) {
      auto b = base.find(name);
      if (b == base.end() || b->second.sizes() != w.sizes()) continue;
      rel += ((w - b->second).norm().item<double>() / std::max(1e-30, w.norm().item<double>()));
      n++;
    }
    given = {{"base", options.base_dir},
             {"mean_relative_drift", n ? rel / static_cast<double>(n) : 0.0},
             {"p_recovery_rate", RecoveryRate(m.p, subject.keys.p)},
             {"p_c_recovery_rate",
              m.p_c.empty() ? json(nullptr) : json(RecoveryRate(m.p_c, subject.keys.p_c))}};
  }
  return {{"attacker_knowledge",
           "the transformed checkpoint (the server's) plus public base weights the model was "
           "fine-tuned from; no key, no traffic"},
          {"drift_definition",
           "every tensor W of the audited model gets Gaussian noise with ||dW|| = drift * ||W|| "
           "(simulated fine-tuning); the audited model itself is the public base"},
          {"against_drift", curve},
          {"given_base", given}};
}

}  // namespace stip
