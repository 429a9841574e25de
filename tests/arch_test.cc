// config.json reading and the architecture tables, against the fixtures'
// real configs and hand-made broken ones.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "common/arch/architecture.h"
#include "common/error.h"
#include "common/format/checkpoint.h"
#include "tests/fixtures.h"

namespace stip {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Fixture(const std::string& arch) {
  return std::string(STIP_TEST_DATA_DIR) + "/hf-reference/" + arch + "/config.json";
}

TEST(ModelConfig, ReadsGpt2) {
  ModelConfig c = LoadModelConfig(Fixture("gpt2"));
  EXPECT_EQ(c.model_type, "gpt2");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.intermediate_size, 256);  // n_inner null -> 4 * n_embd
  EXPECT_EQ(c.positions, PositionKind::kLearned);
  EXPECT_EQ(c.activation, Activation::kGeluTanh);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{50256});
}

TEST(ModelConfig, ReadsLlamaWithTransformers5Keys) {
  ModelConfig c = LoadModelConfig(std::string(STIP_TEST_DATA_DIR) + "/hf-reference/llama");
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.group_size(), 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.dtype, "float32");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
}

TEST(ModelConfig, ReadsOlderKeys) {
  std::string text = Slurp(Fixture("llama"));
  text = PatchConfigJson(text, R"({"rope_parameters": null, "rope_theta": 500000.0,
                                   "dtype": null, "torch_dtype": "bfloat16", "head_dim": null})");
  ModelConfig c = ParseModelConfig(text, "old.json");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_EQ(c.head_dim, 16);  // hidden / heads
}

TEST(ModelConfig, Qwen2HasQkvBiasAndMixtralHasExperts) {
  ModelConfig q = LoadModelConfig(Fixture("qwen2"));
  EXPECT_TRUE(q.qkv_bias);
  EXPECT_FALSE(q.o_bias);
  EXPECT_TRUE(q.tie_word_embeddings);
  ModelConfig m = LoadModelConfig(Fixture("mixtral"));
  EXPECT_EQ(m.ffn, FfnKind::kMoe);
  EXPECT_EQ(m.num_experts, 4);
  EXPECT_EQ(m.experts_per_token, 2);
  EXPECT_DOUBLE_EQ(m.rope.theta, 1e6);
  EXPECT_EQ(m.head_dim, 16);  // head_dim: null
}

TEST(ModelConfig, MistralSlidingWindow) {
  std::string text =
      PatchConfigJson(Slurp(Fixture("llama")), R"({"model_type": "mistral", "sliding_window": 8})");
  ModelConfig c = ParseModelConfig(text, "mistral.json");
  ASSERT_EQ(c.layer_windows.size(), 2u);
  EXPECT_EQ(c.layer_windows[0], std::optional<int64_t>(8));
  text = PatchConfigJson(Slurp(Fixture("qwen2")), R"({"sliding_window": 8,
      "layer_types": ["full_attention", "sliding_attention"]})");
  c = ParseModelConfig(text, "qwen2.json");
  EXPECT_EQ(c.layer_windows[0], std::nullopt);
  EXPECT_EQ(c.layer_windows[1], std::optional<int64_t>(8));
}

void ExpectError(const std::string& text, ErrorCode code, const std::string& needle) {
  try {
    ParseModelConfig(text, "bad.json");
    FAIL() << "accepted: " << text;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, ClearErrors) {
  const std::string llama = Slurp(Fixture("llama"));
  ExpectError(PatchConfigJson(llama, R"({"model_type": "bloom"})"), ErrorCode::kUnimplemented,
              "bloom");
  ExpectError(PatchConfigJson(llama, R"({"hidden_size": null})"), ErrorCode::kInvalidArgument,
              "hidden_size");
  ExpectError(PatchConfigJson(llama, R"({"num_hidden_layers": "two"})"),
              ErrorCode::kInvalidArgument, "num_hidden_layers");
  ExpectError(PatchConfigJson(llama, R"({"num_key_value_heads": 3})"), ErrorCode::kInvalidArgument,
              "num_key_value_heads");
  ExpectError(PatchConfigJson(llama, R"({"rope_parameters": {"rope_type": "yarn"}})"),
              ErrorCode::kUnimplemented, "yarn");
  ExpectError("{not json", ErrorCode::kInvalidArgument, "JSON");
  ExpectError("[1, 2]", ErrorCode::kInvalidArgument, "object");
  ExpectError(R"({"vocab_size": 5})", ErrorCode::kInvalidArgument, "model_type");
  EXPECT_THROW(LoadModelConfig("/nonexistent/dir"), Error);
}

TEST(Architecture, ExpectedTensorsMatchTheFixtureFiles) {
  // Names and shapes of the tables against what transformers wrote (the
  // safetensors headers are checked in engine tests; here: counts and names).
  ModelConfig g = LoadModelConfig(Fixture("gpt2"));
  auto gt = ExpectedTensors(g);
  EXPECT_EQ(gt.size(), 4u + 12u * 2u);  // wte wpe ln_f.{w,b} + 12 per layer; head tied
  EXPECT_EQ(gt[0].name, "transformer.wte.weight");
  bool found = false;
  for (const auto& e : gt) {
    if (e.name == "transformer.h.1.attn.c_attn.weight") {
      found = true;
      EXPECT_EQ(e.shape, (std::vector<int64_t>{64, 192}));  // Conv1D [in, out]
      EXPECT_EQ(e.role, Role::kQkv);
    }
  }
  EXPECT_TRUE(found);
  ModelConfig m = LoadModelConfig(Fixture("mixtral"));
  auto mt = ExpectedTensors(m);
  EXPECT_EQ(mt.size(), 3u + 2u * (7u + 3u * 4u));
  EXPECT_EQ(TensorName(m, Role::kExpertDown, 1, 3),
            "model.layers.1.block_sparse_moe.experts.3.w2.weight");
  EXPECT_THROW(TensorName(g, Role::kRouter, 0), Error);
}

// ---- the role table and every registered family --------------------------------

TEST(RoleTable, OneRowPerRoleInOrderWithConsistentAxes) {
  const auto& roles = AllRoles();
  ASSERT_FALSE(roles.empty());
  for (size_t i = 0; i < roles.size(); ++i) {
    const RoleInfo& r = roles[i];
    EXPECT_EQ(static_cast<size_t>(r.role), i) << r.name;
    EXPECT_EQ(&Info(r.role), &r);
    EXPECT_NE(r.rows, Axis::kNone) << r.name;
    for (size_t j = 0; j < i; ++j) EXPECT_STRNE(roles[j].name, r.name);
    // Client axes never reach a server tensor (the transform has no permutation for them).
    const bool client_axis = r.rows == Axis::kVocab || r.rows == Axis::kPositions ||
                             r.rows == Axis::kTokenTypes || r.rows == Axis::kOne ||
                             r.cols == Axis::kPatch;
    if (client_axis) {
      EXPECT_EQ(r.scope, Scope::kClient) << r.name;
    }
    // Per-expert axes only in per-expert roles.
    EXPECT_EQ(r.rows == Axis::kExpertFfn || r.cols == Axis::kExpertFfn, r.scope == Scope::kExpert)
        << r.name;
    if (r.tied_to_embedding) {
      EXPECT_EQ(Info(Role::kTokenEmbedding).cols,
                r.cols == Axis::kHeadHidden ? Axis::kHidden : r.cols);
    }
  }
}

TEST(RegisteredArchitectures, EachHasAFixture) {
  for (const Architecture* a : Architectures()) {
    bool found = false;
    for (const test::Fixture& f : test::AllFixtures()) {
      for (const std::string& t : a->model_types) found = found || f.config.model_type == t;
    }
    EXPECT_TRUE(found) << a->name << " has no fixture under tests/data/hf-reference";
    for (const TensorSpec& s : a->tensors) {
      // A pattern names its layer (and expert) exactly when the role's scope says so.
      EXPECT_EQ(s.pattern.find("{L}") != std::string::npos, IsPerLayer(s.role)) << s.pattern;
      EXPECT_EQ(s.pattern.find("{E}") != std::string::npos, IsPerExpert(s.role)) << s.pattern;
    }
  }
}

class FixtureTables : public ::testing::TestWithParam<std::string> {};

// The table's names and shapes against what transformers wrote: every stored
// tensor is expected, with its exact shape, and nothing is missing.
TEST_P(FixtureTables, ExpectedTensorsAreExactlyTheCheckpoint) {
  const test::Fixture& f = test::GetFixture(GetParam());
  Checkpoint ckpt = Checkpoint::Open(f.dir);
  std::vector<TensorEntry> expected = ExpectedTensors(f.config);
  EXPECT_EQ(expected.size(), ckpt.Names().size());
  for (const TensorEntry& e : expected) {
    ASSERT_TRUE(ckpt.Has(e.name)) << e.name;
    EXPECT_EQ(ckpt.Get(e.name).info->shape, e.shape) << e.name << " (" << RoleName(e.role) << ")";
    EXPECT_EQ(e.shape, StoredShape(e.role, e.layout, f.config));
  }
}

INSTANTIATE_TEST_SUITE_P(HfReference, FixtureTables,
                         ::testing::ValuesIn(test::FixtureNames(true, true)), test::ParamName());

}  // namespace
}  // namespace stip
