#include "common/engine/causal_lm.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <set>

#include "common/arch/architecture.h"
#include "common/engine/layers.h"
#include "common/engine/pooled_attention.h"
#include "common/error.h"

namespace stip {

// ---- client ----------------------------------------------------------------

namespace {

// Encoders (BERT, ViT) run on common/engine/encoder.h, not as causal LMs.
void RefuseEncoder(const ModelConfig& c) {
  if (c.encoder) {
    throw Unimplemented(c.source + ": model_type " + c.model_type +
                        " is an encoder; it runs on the encoder engine (EncoderClient / "
                        "EncoderServer), not as a causal language model");
  }
}

}  // namespace

ClientModel::ClientModel(ModelConfig config, ClientWeights weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  RefuseEncoder(config_);
}

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
    int64_t lo, hi;
    if (ids.device().is_cpu()) {  // no reductions, no device sync
      at::Tensor c = ids.contiguous();
      const int64_t* p = c.data_ptr<int64_t>();
      auto [mn, mx] = std::minmax_element(p, p + t);
      lo = *mn;
      hi = *mx;
    } else {
      lo = ids.min().item<int64_t>();
      hi = ids.max().item<int64_t>();
    }
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
  // A view of the caller's ids (Embed copies what it keeps).
  at::Tensor t = at::from_blob(const_cast<int64_t*>(ids.data()), {static_cast<int64_t>(ids.size())},
                               at::kLong);
  return Embed(t, start_position);
}

// ---- server ----------------------------------------------------------------

ServerModel::ServerModel(ModelConfig config, ServerWeights weights, LoadOptions options)
    : config_(std::move(config)), weights_(std::move(weights)), options_(options) {
  RefuseEncoder(config_);
  if (config_.positions == PositionKind::kRope) {
    inv_freq_ = RopeInverseFrequencies(config_, options_.device);
  }
  FuseProjections();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  // cuDNN's fused attention builds an execution plan per key length: ~3 ms
  // of host time per call in decode (measured on an H100, LibTorch 2.11),
  // where the flash and memory-efficient kernels need none.
  if (options_.device.is_cuda()) at::globalContext().setSDPUseCuDNN(false);
#endif
  const char* graphs = std::getenv("STIP_CUDA_GRAPHS");
  // (Not for mixtures of experts: routing picks rows on the host.)
  if (options_.device.is_cuda() && options_.cuda_graphs && DecodeGraphs::Available() &&
      config_.ffn != FfnKind::kMoe && !(graphs && std::string(graphs) == "0")) {
    graphs_ = std::make_unique<DecodeGraphs>(*this);
  }
}

ServerModel::~ServerModel() = default;

int64_t ServerModel::decode_graphs() const { return graphs_ ? graphs_->captured() : 0; }

void ServerModel::FuseProjections() {
  const ModelConfig& c = config_;
  const int64_t q = c.q_size(), kv = c.kv_size();
  // A missing bias beside present ones is zeros (x + 0 == x exactly).
  auto bias = [](const at::Tensor& b, int64_t n, const at::Tensor& like) {
    return b.defined() ? b : at::zeros({n}, like.options());
  };
  fused_.resize(weights_.layers.size());
  for (size_t l = 0; l < weights_.layers.size(); ++l) {
    LayerWeights& w = weights_.layers[l];
    FusedLayer& f = fused_[l];
    f.wqkv = at::cat({w.wq, w.wk, w.wv}, 0);
    w.wq = f.wqkv.narrow(0, 0, q);
    w.wk = f.wqkv.narrow(0, q, kv);
    w.wv = f.wqkv.narrow(0, q + kv, kv);
    if (w.bq.defined() || w.bk.defined() || w.bv.defined()) {
      f.bqkv = at::cat({bias(w.bq, q, f.wqkv), bias(w.bk, kv, f.wqkv), bias(w.bv, kv, f.wqkv)});
      if (w.bq.defined()) w.bq = f.bqkv.narrow(0, 0, q);
      if (w.bk.defined()) w.bk = f.bqkv.narrow(0, q, kv);
      if (w.bv.defined()) w.bv = f.bqkv.narrow(0, q + kv, kv);
    }
    if (c.ffn == FfnKind::kGated) {
      const int64_t n = w.w_gate.size(0);
      f.w_gate_up = at::cat({w.w_gate, w.w_up}, 0);
      w.w_gate = f.w_gate_up.narrow(0, 0, n);
      w.w_up = f.w_gate_up.narrow(0, n, n);
      if (w.b_gate.defined() || w.b_up.defined()) {
        f.b_gate_up = at::cat({bias(w.b_gate, n, f.w_gate_up), bias(w.b_up, n, f.w_gate_up)});
        if (w.b_gate.defined()) w.b_gate = f.b_gate_up.narrow(0, 0, n);
        if (w.b_up.defined()) w.b_up = f.b_gate_up.narrow(0, n, n);
      }
    }
  }
}

std::pair<at::Tensor, at::Tensor> ServerModel::RopeRows(int64_t end) const {
  std::lock_guard<std::mutex> lock(rope_mu_);
  const int64_t have = rope_cos_.defined() ? rope_cos_.size(0) : 0;
  if (have < end) {
    // Grown by doubling up to the model's context (further only if asked).
    int64_t n = std::max<int64_t>({end, 2 * have, 256});
    if (config_.max_positions > 0) n = std::max(end, std::min(n, config_.max_positions));
    at::Tensor positions =
        at::arange(0, n, at::TensorOptions().dtype(at::kLong).device(options_.device));
    RopeTables t = MakeRopeTables(inv_freq_, positions, options_.dtype);
    if (rope_cos_.defined() && graphs_) {
      rope_retired_.push_back(rope_cos_);
      rope_retired_.push_back(rope_sin_);
    }
    rope_cos_ = t.cos;
    rope_sin_ = t.sin_signed;
  }
  return {rope_cos_, rope_sin_};
}

std::unique_ptr<ServerModel> ServerModel::Load(const std::string& dir, const LoadOptions& options) {
  ModelConfig config = LoadModelConfig(dir);
  Checkpoint ckpt = Checkpoint::Open(dir);
  CheckpointSource source(ckpt);
  ServerWeights w = LoadServerWeights(config, source, options);
  return std::make_unique<ServerModel>(std::move(config), std::move(w), options);
}

std::shared_ptr<KvPool> ServerModel::NewPool(int64_t sequences, int64_t positions) const {
  return KvPool::Create(config_.num_layers, config_.num_kv_heads, config_.head_dim, sequences,
                        positions, options_.dtype, options_.device);
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
  inputs.reserve(batch.size());
  lengths.reserve(batch.size());
  pasts.reserve(batch.size());
  int64_t max_end = 0;
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
    s.cache->CheckCapacity(past + t);
    inputs.push_back(s.hidden);
    lengths.push_back(t);
    pasts.push_back(past);
    max_end = std::max(max_end, past + t);
  }
  // [N, d] on the device. Rows that arrive in host memory (as the server
  // receives them) are joined there and moved in one copy.
  at::Tensor x;
  if (inputs.size() == 1) {
    x = inputs[0].to(options_.device, options_.dtype);
  } else if (std::all_of(inputs.begin(), inputs.end(),
                         [](const at::Tensor& t) { return t.is_cpu(); })) {
    x = at::cat(inputs, 0).to(options_.device, options_.dtype);
  } else {
    for (at::Tensor& t : inputs) t = t.to(options_.device, options_.dtype);
    x = at::cat(inputs, 0);
  }
  const int64_t n = x.size(0);
  // Decode steps of pooled sequences on a GPU: a captured CUDA graph.
  KvPool* pool = batch[0].cache->pool();
  std::vector<int64_t> slots;
  if (pool) {
    std::set<int64_t> seen;
    for (const SequenceStep& s : batch) {
      if (s.cache->pool() != pool || !seen.insert(s.cache->slot()).second) break;
      slots.push_back(s.cache->slot());
    }
    if (slots.size() != batch.size()) slots.clear();  // not one pool: per sequence
  }
  const bool decode = std::all_of(lengths.begin(), lengths.end(), [](int64_t t) { return t == 1; });
  if (graphs_ && !slots.empty() && decode &&
      std::none_of(batch.begin(), batch.end(),
                   [](const SequenceStep& s) { return s.all_logits; })) {
    at::Tensor logits = graphs_->Run(*pool, x, slots, pasts);
    if (logits.defined()) {
      std::vector<at::Tensor> out;
      for (size_t i = 0; i < batch.size(); ++i) {
        out.push_back(logits.narrow(0, static_cast<int64_t>(i), 1));
        batch[i].cache->Commit(1);
      }
      return out;
    }
  }

  at::Tensor cos, sin;  // [N, 1, d_h]
  if (c.positions == PositionKind::kRope) {
    auto [cos_rows, sin_rows] = RopeRows(max_end);
    if (batch.size() == 1) {  // consecutive positions: a view of the tables
      cos = cos_rows.narrow(0, pasts[0], lengths[0]);
      sin = sin_rows.narrow(0, pasts[0], lengths[0]);
    } else {
      std::vector<int64_t> pos;
      pos.reserve(static_cast<size_t>(n));
      for (size_t i = 0; i < batch.size(); ++i) {
        for (int64_t j = 0; j < lengths[i]; ++j) pos.push_back(pasts[i] + j);
      }
      at::Tensor index = at::tensor(at::ArrayRef<int64_t>(pos), at::kLong).to(options_.device);
      cos = cos_rows.index_select(0, index);
      sin = sin_rows.index_select(0, index);
    }
  }
  // Sequences whose caches share a pool run attention as one batch.
  std::optional<PooledBatch> pooled;
  if (!slots.empty() && PooledBatch::Qualifies(lengths, pasts)) {
    pooled.emplace(*pool, slots, pasts, lengths[0], options_.device);
  }
  x = RunLayers(x, cos, sin,
                [&](int l, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const std::optional<int64_t>& window, double scale) -> at::Tensor {
                  if (pooled) return pooled->Attend(l, q, k, v, window, scale);
                  if (batch.size() == 1) {
                    auto [keys, values] = batch[0].cache->Append(l, k, v);
                    return CausalAttention(q, keys, values, pasts[0], window, scale);
                  }
                  std::vector<at::Tensor> outs;
                  outs.reserve(batch.size());
                  int64_t offset = 0;
                  for (size_t i = 0; i < batch.size(); ++i) {
                    const int64_t t = lengths[i];
                    auto [keys, values] =
                        batch[i].cache->Append(l, k.narrow(0, offset, t), v.narrow(0, offset, t));
                    outs.push_back(CausalAttention(q.narrow(0, offset, t), keys, values, pasts[i],
                                                   window, scale));
                    offset += t;
                  }
                  return at::cat(outs, 0);
                });

  // Only the rows whose logits were asked for go through the head.
  at::Tensor selected;
  if (batch.size() == 1) {
    selected = batch[0].all_logits ? x : x.narrow(0, n - 1, 1);
  } else {
    std::vector<at::Tensor> rows;
    rows.reserve(batch.size());
    int64_t offset = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      rows.push_back(batch[i].all_logits ? x.narrow(0, offset, lengths[i])
                                         : x.narrow(0, offset + lengths[i] - 1, 1));
      offset += lengths[i];
    }
    selected = at::cat(rows, 0);
  }
  at::Tensor logits = Head(selected);

  std::vector<at::Tensor> out;
  out.reserve(batch.size());
  int64_t offset = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t r = batch[i].all_logits ? lengths[i] : 1;
    out.push_back(batch.size() == 1 ? logits : logits.narrow(0, offset, r));
    offset += r;
    batch[i].cache->Commit(lengths[i]);
  }
  return out;
}

at::Tensor ServerModel::RunLayers(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                                  const AttendFn& attend) const {
  const ModelConfig& c = config_;
  const int64_t n = x.size(0);
  const double base_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  const int64_t nh = c.num_heads, nkv = c.num_kv_heads;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = weights_.layers[static_cast<size_t>(l)];
    const FusedLayer& f = fused_[static_cast<size_t>(l)];
    at::Tensor h = Norm(x, c.norm, w.attn_norm_w, w.attn_norm_b, c.norm_eps);
    at::Tensor qkv = Linear(h, f.wqkv, f.bqkv).view({n, nh + 2 * nkv, c.head_dim});
    at::Tensor q, k;
    if (c.positions == PositionKind::kRope) {
      at::Tensor qk = ApplyRopeTables(qkv.narrow(1, 0, nh + nkv), cos, sin);
      q = qk.narrow(1, 0, nh);
      k = qk.narrow(1, nh, nkv);
    } else {
      q = qkv.narrow(1, 0, nh);
      k = qkv.narrow(1, nh, nkv);
    }
    at::Tensor v = qkv.narrow(1, nh + nkv, nkv);
    double scale = base_scale;
    if (c.scale_attn_by_inverse_layer_idx) scale /= static_cast<double>(l + 1);
    const std::optional<int64_t>& window = c.layer_windows[static_cast<size_t>(l)];
    at::Tensor attn = attend(static_cast<int>(l), q, k, v, window, scale);
    x = Linear(attn, w.wo, w.bo).add_(x);  // == x + attn W_o^T
    h = Norm(x, c.norm, w.ffn_norm_w, w.ffn_norm_b, c.norm_eps);
    if (c.ffn == FfnKind::kGated) {
      const int64_t m = f.w_gate_up.size(0) / 2;
      at::Tensor gate_up = Linear(h, f.w_gate_up, f.b_gate_up);  // [N, 2 ffn]
      at::Tensor a = Activate(gate_up.narrow(1, 0, m), c.activation).mul_(gate_up.narrow(1, m, m));
      x = Linear(a, w.w_down, w.b_down).add_(x);
    } else {
      x = FeedForward(c, w, h).add_(x);
    }
  }
  return x;
}

at::Tensor ServerModel::Head(const at::Tensor& rows) const {
  const ModelConfig& c = config_;
  at::Tensor h = Norm(rows, c.norm, weights_.final_norm_w, weights_.final_norm_b, c.norm_eps);
  return Linear(h, weights_.lm_head_w, weights_.lm_head_b).to(at::kFloat);
}

void ServerModel::PrepareDecodeGraph(int64_t key_span) const {
  if (config_.positions == PositionKind::kRope) RopeRows(key_span);
}

at::Tensor ServerModel::DecodeStepCore(const at::Tensor& x, KvPool& pool, const at::Tensor& slots,
                                       const at::Tensor& pasts, int64_t key_span,
                                       int64_t first_slot) const {
  at::Tensor cos, sin;
  if (config_.positions == PositionKind::kRope) {
    auto [cos_rows, sin_rows] = RopeRows(key_span);
    cos = cos_rows.index_select(0, pasts);
    sin = sin_rows.index_select(0, pasts);
  }
  PooledBatch pooled(pool, slots, pasts, key_span, first_slot);
  at::Tensor h = RunLayers(x, cos, sin,
                           [&](int l, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<int64_t>& window,
                               double scale) { return pooled.Attend(l, q, k, v, window, scale); });
  return Head(h);
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
  c10::InferenceMode inference_mode;
  const size_t b = prompts.size();
  std::vector<KvCache> caches;
  caches.reserve(b);
  // Several rows share a pool, so that their decode steps run attention as
  // one batch; STIP_KV_POOL=0 keeps a cache per row (for comparisons).
  std::shared_ptr<KvPool> pool;
  const char* use_pool = std::getenv("STIP_KV_POOL");
  if (b > 1 && !(use_pool && std::string(use_pool) == "0")) {
    size_t longest = 0;
    for (const auto& p : prompts) longest = std::max(longest, p.size());
    pool = server.NewPool(static_cast<int64_t>(b),
                          static_cast<int64_t>(longest) + std::max(options.max_new_tokens, 1));
  }
  for (size_t i = 0; i < b; ++i) caches.push_back(pool ? pool->Acquire() : server.NewCache());
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
