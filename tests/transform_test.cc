// The STIP transformation: equivalence on the Hugging Face fixtures and the
// demo models, on random small configurations of every family, with sharded
// checkpoints on disk -- and the paper's literal (wrong) rules caught as not
// equivalent by the same checks.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <random>

#include "common/arch/architecture.h"
#include "common/client/client_permuter.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/format/safetensors.h"
#include "common/keys/model_keys.h"
#include "common/tokenizer/tokenizer.h"
#include "common/transform/transform_checkpoint.h"
#include "common/transform/transform_rules.h"
#include "common/transform/verify.h"
#include "common/util/files.h"
#include "tests/fixtures.h"
#include "tests/temp_dir.h"
#include "tests/test_util.h"

namespace stip {
namespace {

using test::TempDir;

using test::FixtureDir;
using test::MaxAbsDiff;
using test::ModelDir;
using test::Reference;
using test::ToIds;

// ---- in-memory models --------------------------------------------------------

struct MemModel {
  ModelConfig config;
  std::map<std::string, at::Tensor> tensors;
};

// Transforms without validating the keys, so that tests can apply broken
// layouts and see that they are caught.
std::map<std::string, at::Tensor> TransformUnchecked(const MemModel& m, const ModelKeys& keys) {
  MapSource src(m.tensors);
  std::map<std::string, at::Tensor> out;
  for (const TransformedTensor& t : PlanServerTensors(m.config)) {
    out[t.name] = PermuteTensor(src.Load(SourceTensorName(t, m.config, keys), at::kFloat, at::kCPU),
                                t.layout, PermutationsFor(t, m.config, keys));
  }
  return out;
}

// All-position logits of `ids`: plain, or through the STIP path with `server_tensors`.
at::Tensor RunPlain(const MemModel& m, const std::vector<int64_t>& ids) {
  MapSource src(m.tensors);
  ClientModel client(m.config, LoadClientWeights(m.config, src, {}));
  ServerModel server(m.config, LoadServerWeights(m.config, src, {}), {});
  KvCache cache = server.NewCache();
  return server.Forward({{client.Embed(ids, 0), &cache, true}})[0];
}

at::Tensor RunStip(const MemModel& m, const std::map<std::string, at::Tensor>& server_tensors,
                   const ModelKeys& keys, const std::vector<int64_t>& ids, bool decode_steps) {
  MapSource src(m.tensors);
  ClientModel client(m.config, LoadClientWeights(m.config, src, {}));
  ModelConfig tc = TransformedConfig(m.config, keys.instance_id);
  MapSource tsrc(server_tensors, "transformed");
  ServerModel server(tc, LoadServerWeights(tc, tsrc, {}), {});
  KvCache cache = server.NewCache();
  if (!decode_steps) {
    at::Tensor o = server.Forward({{PermuteHidden(client.Embed(ids, 0), keys.p), &cache, true}})[0];
    return UnpermuteLogits(o, keys.p_c);
  }
  // Prefill half, then one position per step through the KV cache.
  const size_t half = ids.size() / 2;
  std::vector<at::Tensor> rows;
  std::vector<int64_t> first(ids.begin(), ids.begin() + static_cast<int64_t>(half));
  rows.push_back(
      server.Forward({{PermuteHidden(client.Embed(first, 0), keys.p), &cache, true}})[0]);
  for (size_t i = half; i < ids.size(); ++i) {
    at::Tensor x =
        PermuteHidden(client.Embed(std::vector<int64_t>{ids[i]}, cache.length()), keys.p);
    rows.push_back(server.Forward({{x, &cache, false}})[0]);
  }
  return UnpermuteLogits(at::cat(rows, 0), keys.p_c);
}

// A random small configuration of a fixture's family: its parsed config with
// random sizes (heads, groups where the family has grouped-query attention,
// head size, widths, experts, sliding windows, biases, tying), random weights.
// Nothing here names a family: a new one is covered by its fixture.
MemModel RandomModel(const std::string& fixture, std::mt19937& rng) {
  auto pick = [&](std::vector<int64_t> v) { return v[rng() % v.size()]; };
  const ModelConfig& base = test::GetFixture(fixture).config;
  ModelConfig c = base;
  c.source = fixture + " (random)";
  const bool gqa = base.num_kv_heads < base.num_heads;
  c.num_kv_heads = gqa ? pick({1, 2, 3}) : pick({2, 4});
  c.num_heads = c.num_kv_heads * (gqa ? pick({1, 2, 3}) : 1);
  c.head_dim = pick({4, 8});
  // Families with grouped-query attention also take head_dim apart from hidden_size.
  c.hidden_size = gqa ? pick({12, 24, 32}) : c.num_heads * c.head_dim;
  c.vocab_size = pick({37, 64});
  c.intermediate_size = pick({16, 20, 40, 48});
  c.num_layers = 2;
  c.max_positions = 64;
  c.layer_windows.assign(2, std::nullopt);
  for (auto& w : c.layer_windows) {
    if (rng() % 3 == 0) w = pick({3, 5});
  }
  if (c.num_experts > 0) {
    c.num_experts = pick({3, 4});
    c.experts_per_token = 2;
  }
  c.qkv_bias = rng() % 2 == 0;
  c.o_bias = c.qkv_bias;
  c.tie_word_embeddings = rng() % 2 == 0;
  c.rope.theta = static_cast<double>(pick({10000, 500000}));
  MemModel m;
  m.config = c;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(rng());
  for (const TensorEntry& e : ExpectedTensors(m.config)) {
    bool norm = e.role == Role::kAttnNormWeight || e.role == Role::kFfnNormWeight ||
                e.role == Role::kFinalNormWeight;
    at::Tensor t = at::randn(e.shape, gen) * (norm ? 0.1 : 0.3);
    if (norm) t = t + 1;
    m.tensors[e.name] = t;
  }
  return m;
}

std::vector<int64_t> RandomIds(const ModelConfig& c, std::mt19937& rng, size_t n) {
  std::vector<int64_t> ids(n);
  for (auto& id : ids) id = static_cast<int64_t>(rng() % static_cast<uint32_t>(c.vocab_size));
  return ids;
}

// ---- property tests: random configurations of every family ------------------

class RandomConfigTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RandomConfigTest, StipEqualsPlain) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 6; ++trial) {
    MemModel m = RandomModel(GetParam(), rng);
    ModelKeys keys = GenerateKeys(m.config, "test");
    auto server = TransformInMemory(m.config, MapSource(m.tensors), keys);
    // The server's tensors hold no embedding table.
    EXPECT_EQ(server.count(TensorName(m.config, Role::kTokenEmbedding)), 0u);
    std::vector<int64_t> ids = RandomIds(m.config, rng, 12);
    at::Tensor plain = RunPlain(m, ids);
    for (bool steps : {false, true}) {
      at::Tensor stip = RunStip(m, server, keys, ids, steps);
      // fp32 sums in another order: relative to the logits' magnitude.
      EXPECT_LE(MaxAbsDiff(plain, stip), 1e-5 * std::max(1.0, plain.abs().max().item<double>()))
          << GetParam() << " trial " << trial << (steps ? " (cached steps)" : "") << ": heads "
          << m.config.num_heads << "/" << m.config.num_kv_heads << " d_h " << m.config.head_dim
          << " d " << m.config.hidden_size << " tied " << m.config.tie_word_embeddings
          << " windows " << m.config.layer_windows[0].value_or(0) << "/"
          << m.config.layer_windows[1].value_or(0);
      EXPECT_TRUE(at::equal(plain.argmax(-1), stip.argmax(-1)));
    }
    // Sanity: the transformed model on plain inputs is not the plain model.
    ModelConfig tc = TransformedConfig(m.config, keys.instance_id);
    MapSource tsrc(server, "t");
    ServerModel wrong(tc, LoadServerWeights(tc, tsrc, {}), {});
    MapSource src(m.tensors);
    ClientModel client(m.config, LoadClientWeights(m.config, src, {}));
    KvCache cache = wrong.NewCache();
    at::Tensor o = wrong.Forward({{client.Embed(ids, 0), &cache, true}})[0];
    EXPECT_GT(MaxAbsDiff(plain, o), 1e-2);
  }
}

INSTANTIATE_TEST_SUITE_P(Families, RandomConfigTest, ::testing::ValuesIn(test::CausalFixtures()),
                         test::ParamName());

// ---- the paper's literal rules are caught --------------------------------------

MemModel FromCheckpoint(const std::string& dir) {
  MemModel m;
  m.config = LoadModelConfig(dir);
  Checkpoint ckpt = Checkpoint::Open(dir);
  CheckpointSource src(ckpt);
  for (const TensorEntry& e : ExpectedTensors(m.config)) {
    m.tensors[e.name] = src.Load(e.name, at::kFloat, at::kCPU);
  }
  return m;
}

double StipError(const MemModel& m, const ModelKeys& keys,
                 const std::map<std::string, at::Tensor>& server) {
  std::vector<int64_t> ids = ToIds(Reference(FixtureDir(m.config.model_type), "input_ids")[0]);
  return MaxAbsDiff(RunPlain(m, ids), RunStip(m, server, keys, ids, false));
}

TEST(PaperRules, OneArbitraryPermutationAcrossQkColumnsIsNotEquivalent) {
  MemModel m = FromCheckpoint(FixtureDir("gpt2"));  // multi-head, no RoPE
  ModelKeys keys = GenerateKeys(m.config, "test");
  auto exact = TransformUnchecked(m, keys);
  EXPECT_LE(StipError(m, keys, exact), 1e-5);
  // The paper: W_q' = pi^T W_q pi_1, W_k' = pi^T W_k pi_1 with one arbitrary pi_1 over all
  // q/k columns (GPT-2's fused c_attn: the q and k blocks of its output columns).
  auto paper = exact;
  const int64_t d = m.config.hidden_size;
  for (int l = 0; l < m.config.num_layers; ++l) {
    Permutation pi1 = RandomPermutation(d);
    const std::string name = TensorName(m.config, Role::kQkv, l);
    at::Tensor w = m.tensors.at(name).index_select(0, at::tensor(at::ArrayRef<int64_t>(keys.p)));
    at::Tensor idx = at::tensor(at::ArrayRef<int64_t>(pi1));
    at::Tensor q = w.narrow(1, 0, d).index_select(1, idx);
    at::Tensor k = w.narrow(1, d, d).index_select(1, idx);
    at::Tensor v = paper.at(name).narrow(1, 2 * d, d);
    paper[name] = at::cat({q, k, v}, 1).contiguous();
    const std::string bname = TensorName(m.config, Role::kQkvBias, l);
    at::Tensor b = m.tensors.at(bname);
    paper[bname] =
        at::cat({b.narrow(0, 0, d).index_select(0, idx), b.narrow(0, d, d).index_select(0, idx),
                 paper.at(bname).narrow(0, 2 * d, d)})
            .contiguous();
  }
  double err = StipError(m, keys, paper);
  EXPECT_GT(err, 1e-3) << "a cross-head Q/K permutation should break attention";
}

TEST(PaperRules, RandomWithinHeadQkPermutationUnderRopeIsNotEquivalent) {
  MemModel m = FromCheckpoint(FixtureDir("llama"));
  ModelKeys keys = GenerateKeys(m.config, "test");
  auto server = TransformUnchecked(m, keys);
  EXPECT_LE(StipError(m, keys, server), 1e-5);
  // Compose a random within-head permutation w[m] onto the q rows of every query
  // head of group m and onto the k rows of KV head m (what a random w_qk does).
  const ModelConfig& c = m.config;
  for (int l = 0; l < c.num_layers; ++l) {
    std::vector<Permutation> w;
    for (int64_t kv = 0; kv < c.num_kv_heads; ++kv) w.push_back(RandomPermutation(c.head_dim));
    Permutation iq, ik;
    for (int64_t j = 0; j < c.num_heads; ++j) {
      for (int64_t t = 0; t < c.head_dim; ++t)
        iq.push_back(j * c.head_dim + w[j / c.group_size()][t]);
    }
    for (int64_t kv = 0; kv < c.num_kv_heads; ++kv) {
      for (int64_t t = 0; t < c.head_dim; ++t) ik.push_back(kv * c.head_dim + w[kv][t]);
    }
    const std::string q = TensorName(c, Role::kQ, l), k = TensorName(c, Role::kK, l);
    server[q] = PermuteTensor(server.at(q), Layout::kLinear, {iq, {}});
    server[k] = PermuteTensor(server.at(k), Layout::kLinear, {ik, {}});
  }
  // Without RoPE this would be exact (scores are invariant); with RoPE it is not.
  EXPECT_GT(StipError(m, keys, server), 1e-3);
  // And the key check refuses such a layout up front.
  for (auto& layer : keys.layers) {
    for (auto& qk : layer.attention.qk_within) qk = RandomPermutation(c.head_dim);
  }
  EXPECT_THROW(ValidateKeys(keys, c), Error);
}

TEST(PaperRules, SwiGluWithoutSharedFfnPermutationIsNotEquivalent) {
  MemModel m = FromCheckpoint(FixtureDir("llama"));
  ModelKeys keys = GenerateKeys(m.config, "test");
  auto server = TransformUnchecked(m, keys);
  // The paper: W_1' = pi^T W_1 -- the gate gets no FFN permutation while up/down do.
  for (int l = 0; l < m.config.num_layers; ++l) {
    const std::string gate = TensorName(m.config, Role::kFfnGate, l);
    server[gate] = PermuteTensor(m.tensors.at(gate), Layout::kLinear, {{}, keys.p});
  }
  EXPECT_GT(StipError(m, keys, server), 1e-2);
}

// ---- fixtures and demo models through `verify` ---------------------------------

class VerifyTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VerifyTest, Passes) {
  std::string dir = GetParam().rfind("kjv", 0) == 0 ? ModelDir(GetParam()) : FixtureDir(GetParam());
  VerifyOptions opt;
  opt.samples = 4;
  VerifyReport r = VerifyModel(dir, opt);
  EXPECT_TRUE(r.passed) << r.ToJson();
  EXPECT_LE(r.max_abs_diff_stip_vs_plain, 1e-4);
  EXPECT_EQ(r.top1_agreement, 1.0);
  ASSERT_TRUE(r.greedy_match.has_value());
  EXPECT_TRUE(*r.greedy_match);
  if (GetParam().rfind("kjv", 0) != 0) {
    ASSERT_TRUE(r.greedy_batch_match.has_value());
    EXPECT_TRUE(*r.greedy_batch_match);
  }
  ASSERT_TRUE(r.max_abs_diff_plain_vs_reference.has_value());
  auto j = nlohmann::json::parse(r.ToJson());
  for (const char* key : {"arch", "max_abs_diff_plain_vs_reference", "max_abs_diff_stip_vs_plain",
                          "top1_agreement", "greedy_match", "greedy_batch_match"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
}

std::vector<std::string> CausalFixturesAndDemoModels() {
  std::vector<std::string> v = test::CausalFixtures();
  v.push_back("kjv-gpt2");
  v.push_back("kjv-llama");
  return v;
}

INSTANTIATE_TEST_SUITE_P(All, VerifyTest, ::testing::ValuesIn(CausalFixturesAndDemoModels()),
                         test::ParamName());

// ---- on disk: sharded in, sharded out, client bundle ---------------------------

// Splits a checkpoint into `n` shards + index, like transformers' save_pretrained.
void WriteSharded(const std::string& from, const std::string& to, int n) {
  MakeDirectories(to);
  Checkpoint ckpt = Checkpoint::Open(from);
  std::vector<std::string> names = ckpt.Names();
  nlohmann::json weight_map;
  for (int s = 0; s < n; ++s) {
    char file[64];
    std::snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, n);
    std::vector<TensorBytes> part;
    for (size_t i = static_cast<size_t>(s); i < names.size(); i += static_cast<size_t>(n)) {
      TensorRef r = ckpt.Get(names[i]);
      part.push_back({names[i], r.info->dtype, r.info->shape, r.data});
      weight_map[names[i]] = file;
    }
    WriteSafetensors(JoinPath(to, file), part);
  }
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
  WriteFileAtomic(JoinPath(to, "model.safetensors.index.json"), index.dump());
  for (const char* f : {"config.json", "generation_config.json", "tokenizer.json", "vocab.json",
                        "merges.txt", "tokenizer_config.json", "tokenizer.model"}) {
    if (PathExists(JoinPath(from, f))) CopyFile(JoinPath(from, f), JoinPath(to, f));
  }
}

TEST(TransformCheckpointTest, ShardedInputAndOutputEqualPlain) {
  for (const std::string& arch : test::CausalFixtures()) {
    TempDir tmp;
    const std::string sharded = tmp.path() + "/sharded";
    WriteSharded(FixtureDir(arch), sharded, 3);
    ASSERT_TRUE(Checkpoint::Open(sharded).sharded());
    ModelKeys keys = GenerateKeys(LoadModelConfig(sharded), FingerprintModel(sharded));
    TransformOptions opt;
    opt.max_shard_bytes = 100 * 1024;  // several output shards
    opt.progress = false;
    const std::string out = tmp.path() + "/out";
    TransformStats stats = TransformCheckpoint(sharded, out, keys, opt);
    EXPECT_GE(stats.shards, 3) << arch;
    // The server checkpoint: standard names, no embedding table, untied head, no keys.
    Checkpoint server_ckpt = Checkpoint::Open(out + "/server");
    EXPECT_TRUE(server_ckpt.sharded());
    ModelConfig plain = LoadModelConfig(FixtureDir(arch));
    EXPECT_FALSE(server_ckpt.Has(TensorName(plain, Role::kTokenEmbedding)));
    for (const std::string& n : server_ckpt.Names()) {
      EXPECT_EQ(n.find("keys"), std::string::npos);
    }
    ModelConfig sc = LoadModelConfig(out + "/server");
    EXPECT_FALSE(sc.tie_word_embeddings);
    EXPECT_EQ(sc.stip_instance, keys.instance_id);
    const std::string server_config = ReadFile(out + "/server/config.json");
    EXPECT_EQ(server_config.find("p_c"), std::string::npos);
    for (const std::string& f : ListDirectory(out + "/server")) {
      EXPECT_EQ(f.find("key"), std::string::npos) << f;
      // No key bytes anywhere in the server's files: neither p nor p_c (as
      // stored in key files, int64 little-endian), not even a 16-entry run.
      const std::string bytes = ReadFile(out + "/server/" + f);
      for (const Permutation* perm : {&keys.p, &keys.p_c}) {
        std::string needle(reinterpret_cast<const char*>(perm->data()), 16 * sizeof(int64_t));
        EXPECT_EQ(bytes.find(needle), std::string::npos) << f;
      }
    }
    // Every weight matrix differs from its plaintext counterpart.
    Checkpoint plain_ckpt = Checkpoint::Open(FixtureDir(arch));
    int matrices = 0;
    for (const std::string& n : server_ckpt.Names()) {
      TensorRef t = server_ckpt.Get(n);
      if (t.info->shape.size() != 2 || !plain_ckpt.Has(n)) continue;
      TensorRef pt = plain_ckpt.Get(n);
      ASSERT_EQ(t.info->nbytes, pt.info->nbytes) << n;
      EXPECT_NE(std::memcmp(t.data, pt.data, t.info->nbytes), 0) << n << " left in plaintext";
      ++matrices;
    }
    EXPECT_GT(matrices, 4);
    // The client bundle: private, with the client's share only.
    struct stat st;
    ASSERT_EQ(stat((out + "/client").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
    ASSERT_EQ(stat((out + "/client/client_keys.safetensors").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    ClientKeys ck = LoadClientKeys(out + "/client/client_keys.safetensors");
    EXPECT_EQ(ck.p, keys.p);
    EXPECT_EQ(ck.p_c, keys.p_c);

    // The three-party path from the files on disk equals the plain model and the reference.
    auto client = ClientModel::Load(out + "/client");
    auto server = ServerModel::Load(out + "/server");
    CausalLM lm = CausalLM::Load(FixtureDir(arch));
    at::Tensor ids = Reference(FixtureDir(arch), "input_ids");
    for (int64_t b = 0; b < ids.size(0); ++b) {
      std::vector<int64_t> row = ToIds(ids[b]);
      KvCache c1 = server->NewCache(), c2 = lm.server->NewCache();
      at::Tensor stip = UnpermuteLogits(
          server->Forward({{PermuteHidden(client->Embed(row, 0), ck.p), &c1, true}})[0], ck.p_c);
      at::Tensor plain_logits = lm.server->Forward({{lm.client->Embed(row, 0), &c2, true}})[0];
      EXPECT_LE(MaxAbsDiff(stip, plain_logits), 1e-5) << arch;
      EXPECT_LE(MaxAbsDiff(stip, Reference(FixtureDir(arch), "logits")[b]), 1e-4) << arch;
    }
    // Existing output is never overwritten.
    EXPECT_THROW(TransformCheckpoint(sharded, out, keys, opt), Error);
  }
}

TEST(TransformCheckpointTest, KeysForAnotherModelAreRefused) {
  ModelKeys keys = GenerateKeys(LoadModelConfig(FixtureDir("gpt2")), "x");
  TempDir tmp;
  EXPECT_THROW(TransformCheckpoint(FixtureDir("llama"), tmp.path() + "/out", keys), Error);
  EXPECT_FALSE(PathExists(tmp.path() + "/out/server"));
}

// ---- the paper's Table 4: transformed weights without the keys -----------------

TEST(Table4, TransformedWeightsWithoutKeysProduceGibberish) {
  const std::string dir = ModelDir("kjv-llama");
  MemModel m = FromCheckpoint(dir);
  ModelKeys keys = GenerateKeys(m.config, "test");
  auto server_tensors = TransformInMemory(m.config, MapSource(m.tensors), keys);
  ModelConfig tc = TransformedConfig(m.config, keys.instance_id);
  MapSource tsrc(server_tensors, "t");
  ServerModel stolen(tc, LoadServerWeights(tc, tsrc, {}), {});
  MapSource src(m.tensors);
  ClientModel client(m.config, LoadClientWeights(m.config, src, {}));
  std::vector<int64_t> truth = ToIds(Reference(dir, "greedy_ids"));
  std::vector<int64_t> prompt = ToIds(Reference(dir, "input_ids")[0]);
  GreedyOptions g;
  g.max_new_tokens = 40;
  auto out = GreedyGenerate(client, stolen, {prompt}, g)[0];
  size_t agree = 0;
  for (size_t i = prompt.size(); i < truth.size(); ++i) agree += out[i] == truth[i];
  double rate = static_cast<double>(agree) / static_cast<double>(truth.size() - prompt.size());
  auto tok = Tokenizer::FromDirectory(dir);
  std::vector<int64_t> cont(out.begin() + static_cast<int64_t>(prompt.size()), out.end());
  std::vector<int64_t> true_cont(truth.begin() + static_cast<int64_t>(prompt.size()), truth.end());
  std::printf(
      "Table 4 (kjv-llama), prompt \"And God said,\"\n  true continuation: %s\n"
      "  transformed weights without keys: %s\n  token agreement: %.3f\n",
      tok->Decode(true_cont, true).c_str(), tok->Decode(cont, true).c_str(), rate);
  EXPECT_LE(rate, 0.1);
}

}  // namespace
}  // namespace stip
