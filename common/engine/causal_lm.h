// A causal language model split at the embedding, as STIP splits it:
//
//   ClientModel (the user's device): token ids -> hidden states x [T, d]
//     (token embedding, plus learned positions for GPT-2).
//   ServerModel (the cloud): hidden states of a batch of sequences, each with
//     its own KV cache -> logits (decoder layers, final norm, LM head).
//
// The two halves share nothing but the hidden-state tensor, so the server half
// runs a STIP-transformed checkpoint on permuted inputs unchanged.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/arch/model_config.h"
#include "common/engine/decode_graphs.h"
#include "common/engine/kv_cache.h"
#include "common/engine/model_weights.h"

namespace stip {

class ClientModel {
 public:
  ClientModel(ModelConfig config, ClientWeights weights);
  // Reads config.json and the embedding tensors of a model directory.
  static std::unique_ptr<ClientModel> Load(const std::string& dir, const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const ClientWeights& weights() const { return weights_; }
  // ids: [T] int64, for positions [start, start + T). Returns [T, d] in the
  // weights' dtype. Throws kInvalidArgument for ids outside the vocabulary or
  // positions past the learned position table.
  at::Tensor Embed(const at::Tensor& ids, int64_t start_position) const;
  at::Tensor Embed(const std::vector<int64_t>& ids, int64_t start_position) const;

 private:
  ModelConfig config_;
  ClientWeights weights_;
};

// One sequence's share of a batched forward pass.
struct SequenceStep {
  at::Tensor hidden;         // [T, d]: T >= 1 new positions
  KvCache* cache = nullptr;  // the sequence's cache; its length() is the first new position
  bool all_logits = false;   // logits for every new position instead of the last only
};

class ServerModel {
 public:
  ServerModel(ModelConfig config, ServerWeights weights, LoadOptions options);
  // Reads config.json and the server tensors of a (possibly STIP-transformed)
  // model directory.
  static std::unique_ptr<ServerModel> Load(const std::string& dir, const LoadOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const LoadOptions& options() const { return options_; }
  // A cache of its own that grows on demand.
  KvCache NewCache() const;
  // A pool of `sequences` caches of up to `positions` each (zeroed memory,
  // allocated now): batches of its caches run attention as one batch.
  std::shared_ptr<KvPool> NewPool(int64_t sequences, int64_t positions) const;
  // Bytes of KV cache per position (all layers, keys and values).
  int64_t CacheBytesPerPosition() const;

  // One forward pass over several sequences of different lengths: projections
  // and feed-forward layers run on all their tokens at once, attention per
  // sequence against its own cache. Appends to every cache. Returns, per
  // sequence, fp32 logits [T, vocab] (all_logits) or [1, vocab]. Throws
  // kInvalidArgument for a malformed step (nothing is committed to any cache
  // then).
  std::vector<at::Tensor> Forward(const std::vector<SequenceStep>& batch) const;

  // For DecodeGraphs: one decode step of B pooled sequences from device
  // tensors alone (x [B, d], slots and pasts [B] int64; keys padded to
  // `key_span`), no host syncs and fixed shapes; fp32 logits [B, vocab].
  // first_slot >= 0: the slots are consecutive from there (keys read in place).
  at::Tensor DecodeStepCore(const at::Tensor& x, KvPool& pool, const at::Tensor& slots,
                            const at::Tensor& pasts, int64_t key_span,
                            int64_t first_slot = -1) const;
  // Makes every table a step of `key_span` keys reads exist beforehand (a
  // graph must not see them reallocated).
  void PrepareDecodeGraph(int64_t key_span) const;
  // CUDA graphs captured so far.
  int64_t decode_graphs() const;

  ~ServerModel();

 private:
  using AttendFn = std::function<at::Tensor(int layer, const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v,
                                            const std::optional<int64_t>& window, double scale)>;
  // The decoder layers over x [N, d] (cos / sin: RoPE rows of its positions).
  at::Tensor RunLayers(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin,
                       const AttendFn& attend) const;
  // Final norm and LM head: fp32 logits of the given rows.
  at::Tensor Head(const at::Tensor& rows) const;

  // Per layer, the projections that read the same input as one matrix:
  // q|k|v and, for SwiGLU, gate|up. The separate weights in weights_ become
  // views of these (no second copy in memory).
  struct FusedLayer {
    at::Tensor wqkv, bqkv;            // [q + 2 kv, d], bias or undefined
    at::Tensor w_gate_up, b_gate_up;  // [2 ffn, d] (gated feed-forward only)
  };
  void FuseProjections();
  // RoPE cos / signed-sin tables covering positions [0, end) (grown on demand).
  std::pair<at::Tensor, at::Tensor> RopeRows(int64_t end) const;

  ModelConfig config_;
  ServerWeights weights_;
  LoadOptions options_;
  std::vector<FusedLayer> fused_;
  at::Tensor inv_freq_;  // RoPE
  mutable std::mutex rope_mu_;
  mutable at::Tensor rope_cos_, rope_sin_;  // [positions, 1, head_dim]
  // Tables replaced by larger ones, kept alive: captured graphs read them.
  mutable std::vector<at::Tensor> rope_retired_;
  std::unique_ptr<DecodeGraphs> graphs_;  // CUDA only
};

// Both halves in one process: the plain model (tests, verification, demos).
struct CausalLM {
  std::unique_ptr<ClientModel> client;
  std::unique_ptr<ServerModel> server;
  static CausalLM Load(const std::string& dir, const LoadOptions& options = {});
};

// Greedy decoding of several prompts at once (one batched Forward per step), as
// transformers' generate(do_sample=False): a sequence that emits an EOS id
// stops and is padded with `pad_id`. Returns prompt + generated ids per row.
// `transform_in`/`transform_out` let the STIP path permute the hidden states
// before the server and un-permute the logits after it.
struct GreedyOptions {
  int max_new_tokens = 16;
  std::vector<int64_t> eos_ids;
  int64_t pad_id = 0;
  std::function<at::Tensor(const at::Tensor&)> transform_in;   // x -> x'
  std::function<at::Tensor(const at::Tensor&)> transform_out;  // o' -> o
};
std::vector<std::vector<int64_t>> GreedyGenerate(const ClientModel& client,
                                                 const ServerModel& server,
                                                 const std::vector<std::vector<int64_t>>& prompts,
                                                 const GreedyOptions& options);

}  // namespace stip
