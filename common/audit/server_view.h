// The security audit's ground truth and the cloud's view of one deployment
// (`stip-developer audit`, docs/audit/).
//
//  AuditSubject  what the developer holds: the plaintext checkpoint (fp32,
//                every tensor by name), its config and the instance keys Π.
//  ServerView    what the server holds or sees: the transformed checkpoint
//                (the same tensors `stip-developer transform` writes to
//                OUT/server) and, per generation over the prompts, the hidden
//                states x' it receives and the logits o' it returns.
//
// x' and o' are simulated in-process with the engine and the transformed
// weights: they are the bytes a stip-server would receive and send for these
// prompts (x' = x[..., p] exactly; the e2e test checks that against a real
// server). Greedy decoding, as the client's --greedy.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/arch/model_config.h"
#include "common/engine/causal_lm.h"
#include "common/keys/model_keys.h"

namespace stip {

using TensorMap = std::map<std::string, at::Tensor>;

struct AuditSubject {
  std::string model_dir;
  ModelConfig config;
  TensorMap plain;  // every tensor of the plaintext checkpoint, fp32, stored layout
  ModelKeys keys;
};

// One generation as the server saw it, with the truth beside it.
struct ObservedGeneration {
  std::vector<int64_t> prompt;  // token ids (truth)
  std::vector<int64_t> ids;     // prompt + generated ids (truth)
  at::Tensor x;                 // [T, d] plaintext hidden states of the fed ids (truth)
  at::Tensor x_prime;           // [T, d] what the server received, row = position
  at::Tensor o_prime;           // [S, V] logits the server returned, one row per decode step
};

struct ServerView {
  ModelConfig config;  // the transformed model's config (untied head, instance id)
  TensorMap weights;   // the transformed server checkpoint, fp32, stored layout
  std::vector<ObservedGeneration> generations;
};

// Reads every tensor the config implies from a model directory (fp32).
AuditSubject LoadAuditSubject(const std::string& model_dir, ModelKeys keys);

// The client half (embeddings) of a plaintext model held in memory.
std::unique_ptr<ClientModel> MakeClientModel(const ModelConfig& config, const TensorMap& plain);
// The server half of a model held in memory (plaintext or transformed).
std::unique_ptr<ServerModel> MakeServerModel(const ModelConfig& config, const TensorMap& weights);

// Transforms `subject` with its keys and runs greedy generations of
// `max_new_tokens` over `prompts` through the STIP path, recording x' and o'.
ServerView MakeServerView(const AuditSubject& subject,
                          const std::vector<std::vector<int64_t>>& prompts, int max_new_tokens);

}  // namespace stip
