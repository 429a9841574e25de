// Encoders (BERT, ViT): the client and server parts against the Hugging Face
// references (tests/data/hf-reference/{bert,vit}, models/{bert-kjv,vit-digits}),
// STIP against plain on random encoder configurations with every head, and
// batching sequences of different lengths against encoding each alone.
#include "common/engine/encoder.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/arch/architecture.h"
#include "common/client/client_permuter.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/format/safetensors.h"
#include "common/keys/model_keys.h"
#include "common/transform/transform_checkpoint.h"
#include "common/transform/transform_rules.h"
#include "common/transform/verify.h"
#include "tests/fixtures.h"
#include "tests/temp_dir.h"
#include "tests/test_util.h"

namespace stip {
namespace {

using test::MaxAbsDiff;
using test::ModelDir;
using test::Reference;
using test::ToIds;

constexpr double kTol = 1e-4;

bool ReadsImages(const ModelConfig& c) { return c.patch_size > 0; }

// The client's part of reference row `i`: ids or pixels in, [T, d] out.
at::Tensor EmbedRow(const EncoderClient& client, const std::string& dir, int64_t i) {
  if (ReadsImages(client.config())) return client.EmbedImage(Reference(dir, "pixel_values")[i]);
  return client.EmbedTokens(ToIds(Reference(dir, "input_ids")[i]));
}

int64_t Rows(const ModelConfig& c, const std::string& dir) {
  return Reference(dir, ReadsImages(c) ? "pixel_values" : "input_ids").size(0);
}

// ---- the fixtures: every registered encoder family -----------------------------

class EncoderFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EncoderFixtureTest, ClientAndServerPartsMatchTransformers) {
  const test::Fixture& f = test::GetFixture(GetParam());
  EncoderClient client = EncoderClient::Load(f.dir);
  EncoderServer server = EncoderServer::Load(f.dir);
  const at::Tensor emb = Reference(f.dir, "embeddings");
  const at::Tensor last = Reference(f.dir, "last_hidden");
  const at::Tensor logits = Reference(f.dir, "logits");
  std::vector<at::Tensor> xs;
  for (int64_t i = 0; i < Rows(f.config, f.dir); ++i) {
    xs.push_back(EmbedRow(client, f.dir, i));
    EXPECT_LE(MaxAbsDiff(xs.back(), emb[i]), kTol) << "embeddings row " << i;
  }
  std::vector<at::Tensor> hidden = server.Hidden(xs);
  std::vector<at::Tensor> out = server.Encode(xs);
  for (size_t i = 0; i < xs.size(); ++i) {
    EXPECT_LE(MaxAbsDiff(hidden[i], last[static_cast<int64_t>(i)]), kTol) << "last_hidden " << i;
    EXPECT_LE(MaxAbsDiff(out[i], logits[static_cast<int64_t>(i)]), kTol) << "logits " << i;
  }
}

TEST_P(EncoderFixtureTest, StipEqualsPlainOnTheFixture) {
  const test::Fixture& f = test::GetFixture(GetParam());
  Checkpoint ckpt = Checkpoint::Open(f.dir);
  CheckpointSource src(ckpt);
  ModelKeys keys = GenerateKeys(f.config, "fixture");
  auto tensors = TransformInMemory(f.config, src, keys);
  // No client tensor reaches the server.
  for (const TensorEntry& e : ExpectedTensors(f.config)) {
    if (IsClientRole(e.role)) {
      EXPECT_EQ(tensors.count(e.name), 0u) << e.name;
    }
  }
  ModelConfig tc = TransformedConfig(f.config, keys.instance_id);
  MapSource tsrc(tensors, "transformed");
  EncoderServer stip(tc, LoadServerWeights(tc, tsrc, {}));
  EncoderClient client = EncoderClient::Load(f.dir);
  std::vector<at::Tensor> xs;
  for (int64_t i = 0; i < Rows(f.config, f.dir); ++i) {
    xs.push_back(PermuteHidden(EmbedRow(client, f.dir, i), keys.p));
  }
  std::vector<at::Tensor> out = stip.Encode(xs);
  const at::Tensor logits = Reference(f.dir, "logits");
  for (size_t i = 0; i < out.size(); ++i) {
    at::Tensor o = UnpermuteLogits(out[i], keys.p_c);
    EXPECT_LE(MaxAbsDiff(o, logits[static_cast<int64_t>(i)]), kTol);
    EXPECT_GT(MaxAbsDiff(out[i], logits[static_cast<int64_t>(i)]), 1e-3) << "not permuted";
  }
}

TEST_P(EncoderFixtureTest, CausalEngineRefusesEncoders) {
  const test::Fixture& f = test::GetFixture(GetParam());
  try {
    CausalLM::Load(f.dir);
    FAIL() << "the causal engine accepted an encoder";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnimplemented);
    EXPECT_NE(std::string(e.what()).find("encoder"), std::string::npos) << e.what();
  }
}

TEST_P(EncoderFixtureTest, BadInputsAreRejected) {
  const test::Fixture& f = test::GetFixture(GetParam());
  EncoderClient client = EncoderClient::Load(f.dir);
  EncoderServer server = EncoderServer::Load(f.dir);
  const int64_t d = f.config.hidden_size;
  for (auto shape : std::vector<std::vector<int64_t>>{{3, d + 1}, {0, d}, {d}, {100000, d}}) {
    EXPECT_THROW(server.Encode({at::zeros(shape)}), Error) << ShapeString(shape);
  }
  if (ReadsImages(f.config)) {
    EXPECT_THROW(client.EmbedImage(at::zeros({3, 31, 32})), Error);
    EXPECT_THROW(client.EmbedTokens({1, 2}), Error);
  } else {
    EXPECT_THROW(client.EmbedTokens({}), Error);
    EXPECT_THROW(client.EmbedTokens({f.config.vocab_size}), Error);
    EXPECT_THROW(client.EmbedTokens({-1}), Error);
    EXPECT_THROW(client.EmbedTokens(std::vector<int64_t>(f.config.max_positions + 1, 1)), Error);
    EXPECT_THROW(client.EmbedTokens({1, 2}, {0, 7}), Error);
    EXPECT_THROW(client.EmbedImage(at::zeros({3, 32, 32})), Error);
  }
}

INSTANTIATE_TEST_SUITE_P(HfReference, EncoderFixtureTest,
                         ::testing::ValuesIn(test::EncoderFixtures()), test::ParamName());

// ---- demo models ----------------------------------------------------------------

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// Every fill-mask example of bert-kjv: the reference top-5 token ids, in order,
// plain and through STIP.
TEST(BertKjv, FillMaskTop5MatchesTheReference) {
  const std::string dir = ModelDir("bert-kjv");
  EncoderClient client = EncoderClient::Load(dir);
  EncoderServer plain = EncoderServer::Load(dir);
  const ModelConfig& c = client.config();
  Checkpoint ckpt = Checkpoint::Open(dir);
  ModelKeys keys = GenerateKeys(c, "bert-kjv");
  auto tensors = TransformInMemory(c, CheckpointSource(ckpt), keys);
  ModelConfig tc = TransformedConfig(c, keys.instance_id);
  MapSource tsrc(tensors, "transformed");
  EncoderServer stip(tc, LoadServerWeights(tc, tsrc, {}));

  // The first example's logits against the reference tensors.
  at::Tensor x0 = client.EmbedTokens(ToIds(Reference(dir, "input_ids")[0]));
  EXPECT_LE(MaxAbsDiff(x0, Reference(dir, "embeddings")[0]), kTol);
  at::Tensor ref_logits = Reference(dir, "logits")[0];
  EXPECT_LE(MaxAbsDiff(plain.Encode({x0})[0], ref_logits),
            1e-5 * std::max(1.0, ref_logits.abs().max().item<double>()) + kTol);

  const nlohmann::json ref = ReadJson(dir + "/reference.json");
  ASSERT_GE(ref["fill_mask"].size(), 1u);
  std::vector<at::Tensor> xs, xs_perm;
  for (const auto& ex : ref["fill_mask"]) {
    xs.push_back(client.EmbedTokens(ex["input_ids"].get<std::vector<int64_t>>()));
    xs_perm.push_back(PermuteHidden(xs.back(), keys.p));
  }
  // All examples in one batch (different lengths).
  std::vector<at::Tensor> plain_out = plain.Encode(xs);
  std::vector<at::Tensor> stip_out = stip.Encode(xs_perm);
  for (size_t i = 0; i < xs.size(); ++i) {
    const auto& ex = ref["fill_mask"][i];
    const int64_t m = ex["mask_index"].get<int64_t>();
    for (bool through_stip : {false, true}) {
      at::Tensor row = through_stip ? UnpermuteLogits(stip_out[i], keys.p_c)[m] : plain_out[i][m];
      at::Tensor probs = at::softmax(row, -1);
      auto [top_p, top_i] = at::topk(probs, 5);
      for (int64_t k = 0; k < 5; ++k) {
        const auto& want = ex["top5"][static_cast<size_t>(k)];
        EXPECT_EQ(top_i[k].item<int64_t>(), want["token"].get<int64_t>())
            << ex["text"] << " rank " << k << (through_stip ? " (STIP)" : "");
        EXPECT_NEAR(top_p[k].item<double>(), want["score"].get<double>(), 2e-5);
      }
    }
  }
}

// Every vit-digits sample: the reference logits and label, plain and through STIP.
TEST(VitDigits, SamplesClassifyAsTheReference) {
  const std::string dir = ModelDir("vit-digits");
  EncoderClient client = EncoderClient::Load(dir);
  EncoderServer plain = EncoderServer::Load(dir);
  const ModelConfig& c = client.config();
  ASSERT_EQ(c.head, HeadKind::kClassifier);
  Checkpoint ckpt = Checkpoint::Open(dir);
  ModelKeys keys = GenerateKeys(c, "vit-digits");
  auto tensors = TransformInMemory(c, CheckpointSource(ckpt), keys);
  ModelConfig tc = TransformedConfig(c, keys.instance_id);
  MapSource tsrc(tensors, "transformed");
  EncoderServer stip(tc, LoadServerWeights(tc, tsrc, {}));
  const at::Tensor pixels = Reference(dir, "pixel_values");
  const at::Tensor emb = Reference(dir, "embeddings");
  const at::Tensor logits = Reference(dir, "logits");
  const std::vector<int64_t> labels = ToIds(Reference(dir, "labels"));
  std::vector<at::Tensor> xs, xs_perm;
  for (int64_t i = 0; i < pixels.size(0); ++i) {
    xs.push_back(client.EmbedImage(pixels[i]));
    EXPECT_LE(MaxAbsDiff(xs.back(), emb[i]), kTol);
    xs_perm.push_back(PermuteHidden(xs.back(), keys.p));
  }
  std::vector<at::Tensor> p = plain.Encode(xs), s = stip.Encode(xs_perm);
  for (size_t i = 0; i < xs.size(); ++i) {
    at::Tensor o = UnpermuteLogits(s[i], keys.p_c);
    EXPECT_LE(MaxAbsDiff(p[i], logits[static_cast<int64_t>(i)]), kTol);
    EXPECT_LE(MaxAbsDiff(o, p[i]), 1e-5 * std::max(1.0, p[i].abs().max().item<double>()));
    EXPECT_EQ(o.argmax().item<int64_t>(), labels[i]) << "sample " << i;
    EXPECT_FALSE(c.labels[static_cast<size_t>(labels[i])].empty());
  }
}

// ---- property tests: random encoder configurations -----------------------------

struct MemModel {
  ModelConfig config;
  std::map<std::string, at::Tensor> tensors;
};

// A random small configuration of an encoder fixture's family with the given
// head: heads, sizes, layers, pooling; random weights.
MemModel RandomEncoder(const std::string& fixture, HeadKind head, std::mt19937& rng) {
  auto pick = [&](std::vector<int64_t> v) { return v[rng() % v.size()]; };
  ModelConfig c = test::GetFixture(fixture).config;
  c.source = fixture + " (random)";
  c.num_heads = c.num_kv_heads = pick({1, 2, 4});
  c.head_dim = pick({4, 8});
  c.hidden_size = c.num_heads * c.head_dim;
  c.intermediate_size = pick({12, 40});
  c.num_layers = pick({1, 2, 3});
  c.layer_windows.assign(static_cast<size_t>(c.num_layers), std::nullopt);
  c.head = head;
  // Bare models (BertModel, ViTModel) store their tensors without the prefix.
  if (head == HeadKind::kNone) c.weight_prefix = "";
  if (ReadsImages(c)) {
    c.patch_size = pick({2, 4});
    c.image_size = c.patch_size * pick({2, 3});
    const int64_t side = c.image_size / c.patch_size;
    c.max_positions = side * side + 1;
    if (head == HeadKind::kMaskedLm) c.head = HeadKind::kClassifier;
  } else {
    c.vocab_size = pick({37, 64});
    c.max_positions = 24;
    c.tie_word_embeddings = rng() % 2 == 0;
  }
  c.num_labels = pick({2, 5});
  c.labels.assign(static_cast<size_t>(c.num_labels), "");
  c.pooling = c.head == HeadKind::kNone ? static_cast<Pooling>(rng() % 3) : Pooling::kNone;
  MemModel m;
  m.config = c;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(rng());
  for (const TensorEntry& e : ExpectedTensors(c)) {
    const RoleInfo& r = Info(e.role);
    const bool norm_weight = std::string(r.name).find("norm.weight") != std::string::npos;
    at::Tensor t = at::randn(e.shape, gen) * (norm_weight ? 0.1 : 0.3);
    if (norm_weight) t = t + 1;
    m.tensors[e.name] = t;
  }
  return m;
}

at::Tensor RandomInput(const EncoderClient& client, std::mt19937& rng, int64_t len) {
  const ModelConfig& c = client.config();
  if (ReadsImages(c)) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(rng());
    return client.EmbedImage(at::randn({c.num_channels, c.image_size, c.image_size}, gen));
  }
  std::vector<int64_t> ids(static_cast<size_t>(len)), types(static_cast<size_t>(len));
  for (auto& id : ids) id = static_cast<int64_t>(rng() % static_cast<uint32_t>(c.vocab_size));
  for (auto& t : types) t = static_cast<int64_t>(rng() % 2);
  return client.EmbedTokens(ids, c.type_vocab_size > 1 ? types : std::vector<int64_t>{});
}

class RandomEncoderTest : public ::testing::TestWithParam<std::tuple<std::string, HeadKind>> {};

TEST_P(RandomEncoderTest, StipEqualsPlainAndBatchingChangesNothing) {
  const auto [fixture, head] = GetParam();
  std::mt19937 rng(4321 + static_cast<int>(head));
  for (int trial = 0; trial < 5; ++trial) {
    MemModel m = RandomEncoder(fixture, head, rng);
    const ModelConfig& c = m.config;
    MapSource src(m.tensors);
    EncoderClient client(c, LoadClientWeights(c, src, {}));
    EncoderServer plain(c, LoadServerWeights(c, src, {}));
    ModelKeys keys = GenerateKeys(c, "test");
    auto server_tensors = TransformInMemory(c, src, keys);
    ModelConfig tc = TransformedConfig(c, keys.instance_id);
    MapSource tsrc(server_tensors, "transformed");
    EncoderServer stip(tc, LoadServerWeights(tc, tsrc, {}));
    const EncoderOutput kind = plain.output();

    std::vector<at::Tensor> xs;
    for (int64_t len : {1, 7, 3, 12}) {
      xs.push_back(RandomInput(client, rng, std::min<int64_t>(len, c.max_positions)));
    }
    std::vector<at::Tensor> xs_perm;
    for (const auto& x : xs) xs_perm.push_back(PermuteHidden(x, keys.p));
    std::vector<at::Tensor> p = plain.Encode(xs), s = stip.Encode(xs_perm);
    ASSERT_EQ(p.size(), xs.size());
    for (size_t i = 0; i < xs.size(); ++i) {
      at::Tensor o =
          OutputIsLogits(kind) ? UnpermuteLogits(s[i], keys.p_c) : UnpermuteLogits(s[i], keys.p);
      const double scale = std::max(1.0, p[i].abs().max().item<double>());
      EXPECT_LE(MaxAbsDiff(o, p[i]), 1e-5 * scale)
          << fixture << " " << EncoderOutputName(kind) << " trial " << trial << " input " << i
          << ": heads " << c.num_heads << " d_h " << c.head_dim << " layers " << c.num_layers;
      // Batched with others (padded to the longest) = alone.
      at::Tensor alone = plain.Encode({xs[i]})[0];
      EXPECT_LE(MaxAbsDiff(alone, p[i]), 1e-5 * scale) << "padding changed input " << i;
      EXPECT_EQ(alone.sizes(), p[i].sizes());
    }
    // The transformed server on plain inputs is not the plain model.
    std::vector<at::Tensor> wrong = stip.Encode(xs);
    EXPECT_GT(MaxAbsDiff(wrong[3], p[3]), 1e-3);
    // Normalized pooled embeddings have unit length.
    if (kind == EncoderOutput::kPooled) {
      ModelConfig nc = c;
      nc.normalize = true;
      EncoderClient nclient(nc, LoadClientWeights(nc, src, {}));
      EXPECT_NEAR(nclient.Finish(p[0]).norm().item<double>(), 1.0, 1e-5);
    }
  }
}

std::vector<std::tuple<std::string, HeadKind>> EncoderCases() {
  std::vector<std::tuple<std::string, HeadKind>> out;
  for (const std::string& f : test::EncoderFixtures()) {
    for (HeadKind h : {HeadKind::kMaskedLm, HeadKind::kClassifier, HeadKind::kNone}) {
      if (h == HeadKind::kMaskedLm && ReadsImages(test::GetFixture(f).config)) continue;
      out.emplace_back(f, h);
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Families, RandomEncoderTest, ::testing::ValuesIn(EncoderCases()),
                         [](const auto& info) {
                           const HeadKind h = std::get<1>(info.param);
                           return std::get<0>(info.param) + (h == HeadKind::kMaskedLm ? "_mlm"
                                                             : h == HeadKind::kClassifier
                                                                 ? "_classifier"
                                                                 : "_none");
                         });

// ---- on disk: transform, then the server checkpoint and the client bundle -------

// A sentence-transformers model made from the bert fixture: a BertModel
// (tensors without the "bert." prefix) with mean pooling and Normalize. The
// oracle is transformers' own last_hidden of the fixture, mean-pooled and
// normalized here.
TEST(EncoderOnDisk, SentenceTransformersThroughTransformedCheckpoint) {
  const test::Fixture& f = test::GetFixture("bert");
  test::TempDir tmp;
  const std::string st = tmp.path() + "/st";
  std::filesystem::create_directories(st + "/1_Pooling");
  std::filesystem::create_directories(st + "/2_Normalize");
  {
    std::ifstream in(f.dir + "/config.json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(st + "/config.json")
        << PatchConfigJson(text, R"({"architectures": ["BertModel"]})");
    std::ofstream(st + "/modules.json") << R"([
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])";
    std::ofstream(st + "/1_Pooling/config.json")
        << R"({"word_embedding_dimension": 64, "pooling_mode_cls_token": false,
               "pooling_mode_mean_tokens": true})";
  }
  Checkpoint ckpt = Checkpoint::Open(f.dir);
  std::vector<TensorBytes> bare;
  for (const std::string& name : ckpt.Names()) {
    if (name.rfind("bert.", 0) != 0) continue;  // the MLM head is not part of a BertModel
    TensorRef r = ckpt.Get(name);
    bare.push_back({name.substr(5), r.info->dtype, r.info->shape, r.data});
  }
  WriteSafetensors(st + "/model.safetensors", bare);

  ModelKeys keys = GenerateKeys(LoadModelConfig(st), FingerprintModel(st));
  TransformOptions opt;
  opt.progress = false;
  TransformCheckpoint(st, tmp.path() + "/out", keys, opt);
  EncoderServer server = EncoderServer::Load(tmp.path() + "/out/server");
  EncoderClient client = EncoderClient::Load(tmp.path() + "/out/client");
  EXPECT_EQ(server.output(), EncoderOutput::kPooled);
  ClientKeys ck = LoadClientKeys(tmp.path() + "/out/client/client_keys.safetensors");
  EXPECT_TRUE(ck.p_c.empty());  // nothing is scored: the output is a hidden-space vector

  const at::Tensor ids = Reference(f.dir, "input_ids");
  const at::Tensor last = Reference(f.dir, "last_hidden");
  std::vector<at::Tensor> xs;
  for (int64_t i = 0; i < ids.size(0); ++i) {
    xs.push_back(PermuteHidden(client.EmbedTokens(ToIds(ids[i])), ck.p));
  }
  std::vector<at::Tensor> out = server.Encode(xs);
  for (size_t i = 0; i < out.size(); ++i) {
    at::Tensor mine = client.Finish(UnpermuteLogits(out[i], ck.p));
    at::Tensor mean = last[static_cast<int64_t>(i)].mean(0);
    at::Tensor want = mean / mean.norm();
    EXPECT_LE(MaxAbsDiff(mine, want), 1e-5) << "row " << i;
    EXPECT_NEAR(mine.norm().item<double>(), 1.0, 1e-5);
  }
}

TEST_P(EncoderFixtureTest, TransformedCheckpointAndClientBundleOnDisk) {
  const test::Fixture& f = test::GetFixture(GetParam());
  test::TempDir tmp;
  ModelKeys keys = GenerateKeys(f.config, FingerprintModel(f.dir));
  TransformOptions opt;
  opt.progress = false;
  TransformCheckpoint(f.dir, tmp.path() + "/out", keys, opt);
  Checkpoint server_ckpt = Checkpoint::Open(tmp.path() + "/out/server");
  for (const TensorEntry& e : ExpectedTensors(f.config)) {
    EXPECT_EQ(server_ckpt.Has(e.name), !IsClientRole(e.role)) << e.name;
  }
  EncoderServer server = EncoderServer::Load(tmp.path() + "/out/server");
  EncoderClient client = EncoderClient::Load(tmp.path() + "/out/client");
  ClientKeys ck = LoadClientKeys(tmp.path() + "/out/client/client_keys.safetensors");
  const at::Tensor logits = Reference(f.dir, "logits");
  std::vector<at::Tensor> xs;
  for (int64_t i = 0; i < Rows(f.config, f.dir); ++i) {
    xs.push_back(PermuteHidden(EmbedRow(client, f.dir, i), ck.p));
  }
  std::vector<at::Tensor> out = server.Encode(xs);
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_LE(MaxAbsDiff(UnpermuteLogits(out[i], ck.p_c), logits[static_cast<int64_t>(i)]), kTol);
  }
}

// ---- `verify` on encoders: the same report as for causal models ---------------

class EncoderVerifyTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EncoderVerifyTest, Passes) {
  const std::string& name = GetParam();
  const std::string dir =
      name.find('-') != std::string::npos ? ModelDir(name) : test::GetFixture(name).dir;
  VerifyOptions opt;
  opt.samples = 4;
  VerifyReport r = VerifyModel(dir, opt);
  EXPECT_TRUE(r.passed) << r.ToJson();
  ASSERT_TRUE(r.max_abs_diff_plain_vs_reference.has_value()) << r.ToJson();
  EXPECT_LE(*r.max_abs_diff_plain_vs_reference, r.reference_tolerance);
  EXPECT_LE(r.max_abs_diff_stip_vs_plain, 1e-4 * std::max(1.0, r.max_abs_logit));
  EXPECT_EQ(r.top1_agreement, 1.0);
  ASSERT_TRUE(r.encoder_batch_match.has_value());
  EXPECT_TRUE(*r.encoder_batch_match);
  auto j = nlohmann::json::parse(r.ToJson());
  for (const char* key : {"arch", "max_abs_diff_plain_vs_reference", "max_abs_diff_stip_vs_plain",
                          "top1_agreement", "greedy_match", "greedy_batch_match", "passed"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_TRUE(j["greedy_match"].is_null());
  EXPECT_TRUE(j["greedy_batch_match"].is_null());
  EXPECT_EQ(j["encoder_output"], name.rfind("vit", 0) == 0 ? "sequence_logits" : "token_logits");
}

std::vector<std::string> EncoderFixturesAndDemoModels() {
  std::vector<std::string> v = test::EncoderFixtures();
  v.push_back("bert-kjv");
  v.push_back("vit-digits");
  return v;
}

INSTANTIATE_TEST_SUITE_P(All, EncoderVerifyTest,
                         ::testing::ValuesIn(EncoderFixturesAndDemoModels()), test::ParamName());

// ---- configs: heads from `architectures`, sentence-transformers ----------------

TEST(EncoderConfig, HeadsFromArchitecturesAndSentenceTransformers) {
  const test::Fixture& bert = test::GetFixture("bert");
  EXPECT_EQ(bert.config.head, HeadKind::kMaskedLm);
  EXPECT_EQ(bert.config.output_size(), bert.config.vocab_size);
  std::ifstream in(bert.dir + "/config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ModelConfig cls =
      ParseModelConfig(PatchConfigJson(text, R"({"architectures": ["BertForSequenceClassification"],
                                "id2label": {"0": "neg", "1": "pos", "2": "mixed"}})"),
                       "cls.json");
  EXPECT_EQ(cls.head, HeadKind::kClassifier);
  EXPECT_EQ(cls.num_labels, 3);
  EXPECT_EQ(cls.labels[2], "mixed");
  EXPECT_EQ(TensorName(cls, Role::kPoolerDense), "bert.pooler.dense.weight");
  ModelConfig bare =
      ParseModelConfig(PatchConfigJson(text, R"({"architectures": ["BertModel"]})"), "bare.json");
  EXPECT_EQ(bare.head, HeadKind::kNone);
  EXPECT_EQ(TensorName(bare, Role::kQ, 1), "encoder.layer.1.attention.self.query.weight");
  EXPECT_THROW(ParseModelConfig(
                   PatchConfigJson(text, R"({"architectures": ["BertForNextSentencePrediction"]})"),
                   "x.json"),
               Error);
  EXPECT_THROW(ParseModelConfig(PatchConfigJson(text, R"({"id2label": {"0": "a", "2": "b"},
                   "architectures": ["BertForSequenceClassification"]})"),
                                "x.json"),
               Error);
  // sentence-transformers: a BertModel with mean pooling and normalization.
  test::TempDir dir;
  {
    std::ofstream(dir.path() + "/config.json")
        << PatchConfigJson(text, R"({"architectures": ["BertModel"]})");
    std::ofstream(dir.path() + "/modules.json") << R"([
      {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])";
    std::filesystem::create_directories(dir.path() + "/1_Pooling");
    std::ofstream(dir.path() + "/1_Pooling/config.json")
        << R"({"word_embedding_dimension": 64, "pooling_mode_cls_token": false,
               "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false})";
  }
  ModelConfig st = LoadModelConfig(dir.path());
  EXPECT_EQ(st.head, HeadKind::kNone);
  EXPECT_EQ(st.pooling, Pooling::kMean);
  EXPECT_TRUE(st.normalize);
  EXPECT_EQ(EncoderOutputOf(st), EncoderOutput::kPooled);
  std::ofstream(dir.path() + "/1_Pooling/config.json")
      << R"({"pooling_mode_cls_token": false, "pooling_mode_max_tokens": true})";
  EXPECT_THROW(LoadModelConfig(dir.path()), Error);

  const test::Fixture& vit = test::GetFixture("vit");
  EXPECT_EQ(vit.config.head, HeadKind::kClassifier);
  EXPECT_EQ(vit.config.max_positions, 17);
  EXPECT_EQ(vit.config.labels.size(), 10u);
}

}  // namespace
}  // namespace stip
