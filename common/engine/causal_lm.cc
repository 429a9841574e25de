#include "common/engine/causal_lm.h"

#include <cmath>

#include "common/arch/architecture.h"
#include "common/engine/layers.h"
#include "common/error.h"

namespace stip {

// ---- client ----------------------------------------------------------------

ClientModel::ClientModel(ModelConfig config, ClientWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {}

std::unique_ptr<ClientModel> ClientModel::Load(const std::string& dir, const LoadOptions& options) {
  ModelConfig config = LoadModelConfig(dir);
  Checkpoint ckpt = Checkpoint::Open(dir);
  CheckpointSource source(ckpt);
  ClientWeights w = LoadClientWeights(config, source, options);
  return std::make_unique<ClientModel>(std::move(config), std::move(w));
}

at::Tensor ClientModel::Embed(const at::Tensor& ids, int64_t start_position) const {
  if (ids.dim() != 1 || ids.scalar_type() != at::kLong) {
    throw InvalidArgument("Embed: expected a 1-D int64 tensor of token ids");
  }
  const int64_t t = ids.size(0);
  if (t > 0) {
    int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size) {
      throw InvalidArgument("token id " + std::to_string(lo < 0 ? lo : hi) +
                            " is outside the vocabulary [0, " + std::to_string(config_.vocab_size) +
                            ")");
    }
  }
  if (start_position < 0) throw InvalidArgument("Embed: negative start position");
  const at::Device device = weights_.token_embedding.device();
  at::Tensor x = weights_.token_embedding.index_select(0, ids.to(device));
  if (weights_.position_embedding.defined()) {
    if (start_position + t > config_.max_positions) {
      throw ResourceExhausted("context of " + std::to_string(start_position + t) +
                              " positions exceeds the model's " +
                              std::to_string(config_.max_positions));
    }
    at::Tensor pos = at::arange(start_position, start_position + t,
                                at::TensorOptions().dtype(at::kLong).device(device));
    x = x + weights_.position_embedding.index_select(0, pos);
  }
  return x;
}

at::Tensor ClientModel::Embed(const std::vector<int64_t>& ids, int64_t start_position) const {
  at::Tensor t = at::tensor(at::ArrayRef<int64_t>(ids), at::kLong);
  return Embed(t, start_position);
}

// ---- server ----------------------------------------------------------------

ServerModel::ServerModel(ModelConfig config, ServerWeights weights, LoadOptions options)
    : config_(std::move(config)), weights_(std::move(weights)), options_(options) {
  if (config_.positions == PositionKind::kRope) {
    inv_freq_ = RopeInverseFrequencies(config_, options_.device);
  }
}

std::unique_ptr<ServerModel> ServerModel::Load(const std::string& dir, const LoadOptions& options) {
  ModelConfig config = LoadModelConfig(dir);
  Checkpoint ckpt = Checkpoint::Open(dir);
  CheckpointSource source(ckpt);
  ServerWeights w = LoadServerWeights(config, source, options);
  return std::make_unique<ServerModel>(std::move(config), std::move(w), options);
}

KvCache ServerModel::NewCache() const {
  return KvCache(config_.num_layers, config_.num_kv_heads, config_.head_dim, options_.dtype,
                 options_.device);
}

int64_t ServerModel::CacheBytesPerPosition() const {
  return 2 * config_.num_layers * config_.kv_size() *
         static_cast<int64_t>(c10::elementSize(options_.dtype));
}

std::vector<at::Tensor> ServerModel::Forward(const std::vector<SequenceStep>& batch) const {
  const ModelConfig& c = config_;
  if (batch.empty()) return {};
  std::vector<at::Tensor> inputs;
  std::vector<int64_t> lengths, pasts;
  std::vector<at::Tensor> positions;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceStep& s = batch[i];
    if (!s.cache) throw InvalidArgument("Forward: sequence " + std::to_string(i) + " has no cache");
    if (!s.hidden.defined() || s.hidden.dim() != 2 || s.hidden.size(1) != c.hidden_size ||
        s.hidden.size(0) < 1) {
      throw InvalidArgument("Forward: sequence " + std::to_string(i) +
                            ": expected hidden states [T >= 1, " + std::to_string(c.hidden_size) +
                            "], got " +
                            (s.hidden.defined() ? ShapeString(s.hidden.sizes().vec()) : "none"));
    }
    const int64_t t = s.hidden.size(0), past = s.cache->length();
    if (past + t > c.max_positions && c.positions == PositionKind::kLearned) {
      throw ResourceExhausted("Forward: context of " + std::to_string(past + t) +
                              " positions exceeds the model's " + std::to_string(c.max_positions));
    }
    inputs.push_back(s.hidden.to(options_.device, options_.dtype));
    lengths.push_back(t);
    pasts.push_back(past);
    positions.push_back(
        at::arange(past, past + t, at::TensorOptions().dtype(at::kLong).device(options_.device)));
  }
  at::Tensor x = inputs.size() == 1 ? inputs[0] : at::cat(inputs, 0);  // [N, d]
  at::Tensor cos, sin;
  if (c.positions == PositionKind::kRope) {
    std::tie(cos, sin) = RopeCosSin(inv_freq_, at::cat(positions, 0), options_.dtype);
  }
  const int64_t n = x.size(0);
  const double base_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
    at::Tensor h = Norm(x, c.norm, w.attn_norm_w, w.attn_norm_b, c.norm_eps);
    at::Tensor q = Linear(h, w.wq, w.bq).view({n, c.num_heads, c.head_dim});
    at::Tensor k = Linear(h, w.wk, w.bk).view({n, c.num_kv_heads, c.head_dim});
    at::Tensor v = Linear(h, w.wv, w.bv).view({n, c.num_kv_heads, c.head_dim});
    if (c.positions == PositionKind::kRope) {
      q = ApplyRope(q, cos, sin);
      k = ApplyRope(k, cos, sin);
    }
    double scale = base_scale;
    if (c.scale_attn_by_inverse_layer_idx) scale /= static_cast<double>(l + 1);
    std::vector<at::Tensor> outs;
    int64_t offset = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const int64_t t = lengths[i];
      auto [keys, values] = batch[i].cache->Append(static_cast<int>(l), k.narrow(0, offset, t),
                                                   v.narrow(0, offset, t));
      outs.push_back(CausalAttention(q.narrow(0, offset, t), keys, values, pasts[i],
                                     c.layer_windows[static_cast<size_t>(l)], scale));
      offset += t;
    }
    at::Tensor attn = outs.size() == 1 ? outs[0] : at::cat(outs, 0);
    x = x + Linear(attn, w.wo, w.bo);
    h = Norm(x, c.norm, w.ffn_norm_w, w.ffn_norm_b, c.norm_eps);
    x = x + FeedForward(c, w, h);
  }

  // Only the rows whose logits were asked for go through the head.
  std::vector<at::Tensor> rows;
  int64_t offset = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    rows.push_back(batch[i].all_logits ? x.narrow(0, offset, lengths[i])
                                       : x.narrow(0, offset + lengths[i] - 1, 1));
    offset += lengths[i];
  }
  at::Tensor selected = rows.size() == 1 ? rows[0] : at::cat(rows, 0);
  selected = Norm(selected, c.norm, weights_.final_norm_w, weights_.final_norm_b, c.norm_eps);
  at::Tensor logits = Linear(selected, weights_.lm_head_w, weights_.lm_head_b).to(at::kFloat);

  std::vector<at::Tensor> out;
  offset = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t r = batch[i].all_logits ? lengths[i] : 1;
    out.push_back(logits.narrow(0, offset, r));
    offset += r;
    batch[i].cache->Commit(lengths[i]);
  }
  return out;
}

// ---- both ------------------------------------------------------------------

CausalLM CausalLM::Load(const std::string& dir, const LoadOptions& options) {
  ModelConfig config = LoadModelConfig(dir);
  Checkpoint ckpt = Checkpoint::Open(dir);
  CheckpointSource source(ckpt);
  CausalLM lm;
  lm.client = std::make_unique<ClientModel>(config, LoadClientWeights(config, source, options));
  lm.server =
      std::make_unique<ServerModel>(config, LoadServerWeights(config, source, options), options);
  return lm;
}

std::vector<std::vector<int64_t>> GreedyGenerate(const ClientModel& client,
                                                 const ServerModel& server,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 const GreedyOptions& options) {
  const size_t b = prompts.size();
  std::vector<KvCache> caches;
  caches.reserve(b);
  for (size_t i = 0; i < b; ++i) caches.push_back(server.NewCache());
  std::vector<std::vector<int64_t>> out = prompts;
  std::vector<bool> done(b, false);
  std::vector<std::vector<int64_t>> pending = prompts;  // ids not yet seen by the server
  auto is_eos = [&](int64_t id) {
    for (int64_t e : options.eos_ids) {
      if (e == id) return true;
    }
    return false;
  };
  for (int step = 0; step < options.max_new_tokens; ++step) {
    std::vector<SequenceStep> batch;
    std::vector<size_t> rows;
    for (size_t i = 0; i < b; ++i) {
      if (done[i]) continue;
      at::Tensor x = client.Embed(pending[i], caches[i].length());
      if (options.transform_in) x = options.transform_in(x);
      batch.push_back({x, &caches[i], false});
      rows.push_back(i);
    }
    if (batch.empty()) break;
    std::vector<at::Tensor> logits = server.Forward(batch);
    for (size_t j = 0; j < rows.size(); ++j) {
      at::Tensor o = logits[j][0];
      if (options.transform_out) o = options.transform_out(o);
      int64_t next = o.argmax().item<int64_t>();
      out[rows[j]].push_back(next);
      pending[rows[j]] = {next};
      if (is_eos(next)) done[rows[j]] = true;
    }
    for (size_t i = 0; i < b; ++i) {
      if (done[i] && static_cast<int>(out[i].size() - prompts[i].size()) < step + 1) {
        out[i].push_back(options.pad_id);
      }
    }
  }
  return out;
}

}  // namespace stip
