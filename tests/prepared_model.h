// A Hugging Face fixture transformed with fresh keys, as the parties would
// hold it: the server checkpoint the developer uploads (server_dir), and the
// user's client bundle (client model and keys), with the plaintext model for
// reference logits. For tests that talk to a stip server directly
// (server_test, hostile_input_test).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/arch/model_config.h"
#include "common/engine/causal_lm.h"
#include "common/engine/kv_cache.h"
#include "common/keys/model_keys.h"
#include "common/transform/transform_checkpoint.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"
#include "tests/test_util.h"

namespace stip::test {

struct Prepared {
  using Ids = std::vector<int64_t>;

  std::string fixture, server_dir, client_dir, instance_id;
  ClientKeys keys;
  std::unique_ptr<ClientModel> client;  // from the client bundle
  CausalLM plain;                       // the plaintext model, for reference logits
  int64_t hidden = 0, max_positions = 0;

  // x' for `ids` at positions [start, start + n).
  at::Tensor Input(const Ids& ids, int64_t start) const {
    return PermuteHidden(client->Embed(ids, start), keys.p);
  }
  // Plain logits of `ids` appended to `cache` (every position's with `all`).
  at::Tensor Plain(KvCache& cache, const Ids& ids, bool all) const {
    at::Tensor x = plain.client->Embed(ids, cache.length());
    return plain.server->Forward({{x, &cache, all}})[0];
  }
  // Plain logits of the last position of `ids`, from a fresh cache.
  at::Tensor Plain(const Ids& ids) const {
    KvCache cache = plain.server->NewCache();
    return Plain(cache, ids, false);
  }
};

// Transforms the fixture `arch` into a new directory under `root` (the server
// checkpoint sharded into files of `shard_bytes`, 0: one file).
inline std::unique_ptr<Prepared> Prepare(const std::string& arch, const std::string& root,
                                         uint64_t shard_bytes) {
  auto p = std::make_unique<Prepared>();
  p->fixture = FixtureDir(arch);
  ModelConfig config = LoadModelConfig(p->fixture);
  ModelKeys keys = GenerateKeys(config, FingerprintModel(p->fixture));
  TransformOptions opt;
  opt.max_shard_bytes = shard_bytes;
  opt.progress = false;
  const std::string out = JoinPath(root, arch + "-" + keys.instance_id);
  TransformCheckpoint(p->fixture, out, keys, opt);
  p->server_dir = JoinPath(out, "server");
  p->client_dir = JoinPath(out, "client");
  p->instance_id = keys.instance_id;
  p->keys = LoadClientKeys(JoinPath(p->client_dir, "client_keys.safetensors"));
  p->client = ClientModel::Load(p->client_dir);
  p->plain = CausalLM::Load(p->fixture);
  p->hidden = config.hidden_size;
  p->max_positions = config.max_positions;
  return p;
}

}  // namespace stip::test
