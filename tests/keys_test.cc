// Tests of the STIP key material: CSPRNG permutations, the attention layout
// (heads map to heads), key files and the model fingerprint. Torch-free.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/arch/model_config.h"
#include "common/error.h"
#include "common/format/dtype.h"
#include "common/format/safetensors.h"
#include "common/keys/model_keys.h"
#include "common/keys/permutation.h"
#include "tests/fixtures.h"
#include "tests/temp_dir.h"

namespace stip {
namespace {

using test::TempDir;

namespace fs = std::filesystem;

std::string FixtureDir(const std::string& arch) {
  return std::string(STIP_TEST_DATA_DIR) + "/hf-reference/" + arch;
}
ModelConfig Fixture(const std::string& arch) { return LoadModelConfig(FixtureDir(arch)); }

// Runs `f`, expects a stip::Error with `code`, and returns its message.
template <typename F>
std::string ErrorOf(F&& f, ErrorCode code) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(ErrorCodeName(e.code()), std::string(ErrorCodeName(code))) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no stip::Error thrown";
  return "";
}

// Number of maximal digit runs in `s`: a message that dumped a permutation
// would hold dozens.
int CountIntegers(const std::string& s) {
  int n = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (std::isdigit(static_cast<unsigned char>(s[i])) &&
        (i == 0 || !std::isdigit(static_cast<unsigned char>(s[i - 1])))) {
      ++n;
    }
  }
  return n;
}

std::string Without(std::string s, const std::string& part) {
  if (part.empty()) return s;
  for (size_t pos; (pos = s.find(part)) != std::string::npos;) s.erase(pos, part.size());
  return s;
}

bool IsLowerHex(const std::string& s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

void ExpectKeysEqual(const ModelKeys& a, const ModelKeys& b) {
  EXPECT_EQ(a.instance_id, b.instance_id);
  EXPECT_EQ(a.model_fingerprint, b.model_fingerprint);
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.p, b.p);
  EXPECT_EQ(a.p_c, b.p_c);
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t l = 0; l < a.layers.size(); ++l) {
    SCOPED_TRACE("layer " + std::to_string(l));
    const LayerKey& x = a.layers[l];
    const LayerKey& y = b.layers[l];
    EXPECT_EQ(x.attention.kv_heads, y.attention.kv_heads);
    EXPECT_EQ(x.attention.q_in_group, y.attention.q_in_group);
    EXPECT_EQ(x.attention.qk_within, y.attention.qk_within);
    EXPECT_EQ(x.attention.v_within, y.attention.v_within);
    EXPECT_EQ(x.ffn, y.ffn);
    EXPECT_EQ(x.expert_order, y.expert_order);
    EXPECT_EQ(x.expert_ffn, y.expert_ffn);
  }
}

unsigned FileMode(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// ---------------------------------------------------------------------------
// Permutations

TEST(Permutation, IdentityAndIsPermutation) {
  EXPECT_EQ(IdentityPermutation(4), (Permutation{0, 1, 2, 3}));
  EXPECT_TRUE(IdentityPermutation(0).empty());
  EXPECT_TRUE(IsPermutation({}, 0));
  EXPECT_TRUE(IsPermutation({2, 0, 1}, 3));
  EXPECT_FALSE(IsPermutation({0, 0, 1}, 3));   // duplicate
  EXPECT_FALSE(IsPermutation({0, 1, 3}, 3));   // out of range
  EXPECT_FALSE(IsPermutation({0, -1, 1}, 3));  // negative
  EXPECT_FALSE(IsPermutation({0, 1}, 3));      // too short
  EXPECT_FALSE(IsPermutation({0, 1, 2}, 2));   // too long
  EXPECT_THROW(IdentityPermutation(-1), Error);
  EXPECT_THROW(RandomPermutation(-1), Error);
}

TEST(Permutation, Inverse) {
  EXPECT_EQ(InversePermutation({2, 0, 1}), (Permutation{1, 2, 0}));
  const Permutation p = RandomPermutation(500);
  const Permutation inv = InversePermutation(p);
  for (size_t i = 0; i < p.size(); ++i) EXPECT_EQ(inv[p[i]], static_cast<int64_t>(i));
  EXPECT_EQ(InversePermutation(inv), p);
  std::string msg = ErrorOf([] { InversePermutation({0, 0, 1}); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("not a permutation of 3"), std::string::npos) << msg;
}

TEST(Permutation, RandomIsPermutation) {
  for (int64_t n : {0, 1, 2, 3, 17, 1000}) {
    EXPECT_TRUE(IsPermutation(RandomPermutation(n), n)) << n;
  }
  // Vocabulary sized (LLaMA 3: 128256; some models 256k).
  EXPECT_TRUE(IsPermutation(RandomPermutation(262144), 262144));
}

TEST(Permutation, TwoDrawsDiffer) {
  // Equal with probability 1/1000!.
  EXPECT_NE(RandomPermutation(1000), RandomPermutation(1000));
}

TEST(Permutation, UniformOverS3) {
  // Each of the 6 permutations of 3 elements appears Binomial(6000, 1/6) times:
  // mean 1000, sd 28.9. P(count < 800) = 4.5e-13 and P(count > 1200) = 6.1e-12
  // (exact binomial tails), so by the union bound over the 6 cells this test
  // fails by chance with probability < 4e-11. A biased shuffle (e.g. swapping
  // with any position, or a modulo-biased draw for small bounds) fails it.
  std::map<Permutation, int> counts;
  for (int i = 0; i < 6000; ++i) ++counts[RandomPermutation(3)];
  ASSERT_EQ(counts.size(), 6u);
  for (const auto& [perm, count] : counts) {
    EXPECT_TRUE(IsPermutation(perm, 3));
    EXPECT_GE(count, 800);
    EXPECT_LE(count, 1200);
  }
}

TEST(Permutation, SecureUniform) {
  EXPECT_THROW(SecureUniform(0), Error);
  EXPECT_EQ(SecureUniform(1), 0u);
  // Every value of a small range appears (a value is missed in 10000 draws
  // with probability 10 * 0.9^10000 ~ 1e-457).
  std::set<uint64_t> seen;
  for (int i = 0; i < 10000; ++i) {
    uint64_t v = SecureUniform(10);
    ASSERT_LT(v, 10u);
    seen.insert(v);
  }
  EXPECT_EQ(seen.size(), 10u);
  // Bounds where about half of all 64-bit words are rejected, and the largest one.
  const uint64_t half = (uint64_t{1} << 63) + 1;
  bool high = false;
  for (int i = 0; i < 200; ++i) {
    uint64_t v = SecureUniform(half);
    ASSERT_LT(v, half);
    high = high || v >= (uint64_t{1} << 62);
  }
  EXPECT_TRUE(high);  // fails by chance with probability 2^-400
  const uint64_t max = ~uint64_t{0};
  for (int i = 0; i < 100; ++i) ASSERT_LT(SecureUniform(max), max);
}

// ---------------------------------------------------------------------------
// Generation and the attention layout

TEST(Keys, GenerateForFixtures) {
  for (const test::Fixture& f : test::AllFixtures()) {
    const std::string& arch = f.name;
    SCOPED_TRACE(arch);
    const ModelConfig& c = f.config;
    const ModelKeys k = GenerateKeys(c, "fingerprint-" + arch);
    EXPECT_NO_THROW(ValidateKeys(k, c));
    EXPECT_EQ(k.model_fingerprint, "fingerprint-" + arch);
    EXPECT_EQ(k.model_type, c.model_type);
    EXPECT_EQ(k.instance_id.size(), 32u);
    EXPECT_TRUE(IsLowerHex(k.instance_id)) << k.instance_id;
    EXPECT_TRUE(IsPermutation(k.p, c.hidden_size));
    EXPECT_TRUE(IsPermutation(k.p_c, c.output_size()));
    ASSERT_EQ(k.layers.size(), static_cast<size_t>(c.num_layers));
    for (const LayerKey& layer : k.layers) {
      EXPECT_EQ(layer.attention.kv_heads.size(), static_cast<size_t>(c.num_kv_heads));
      EXPECT_EQ(layer.attention.q_in_group.size(), static_cast<size_t>(c.num_kv_heads));
      for (const Permutation& r : layer.attention.q_in_group) {
        EXPECT_TRUE(IsPermutation(r, c.group_size()));
      }
      if (c.ffn == FfnKind::kMoe) {
        EXPECT_TRUE(layer.ffn.empty());
        EXPECT_TRUE(IsPermutation(layer.expert_order, c.num_experts));
        ASSERT_EQ(layer.expert_ffn.size(), static_cast<size_t>(c.num_experts));
        for (const Permutation& f : layer.expert_ffn) {
          EXPECT_TRUE(IsPermutation(f, c.intermediate_size));
        }
      } else {
        EXPECT_TRUE(IsPermutation(layer.ffn, c.intermediate_size));
        EXPECT_TRUE(layer.expert_order.empty());
        EXPECT_TRUE(layer.expert_ffn.empty());
      }
    }
  }
  const ModelConfig mixtral = Fixture("mixtral");
  EXPECT_EQ(mixtral.ffn, FfnKind::kMoe);
  EXPECT_GT(mixtral.num_experts, 1);
}

TEST(Keys, FreshInstanceEachTime) {
  const ModelConfig c = Fixture("llama");
  const ModelKeys a = GenerateKeys(c, "");
  const ModelKeys b = GenerateKeys(c, "");
  EXPECT_NE(a.instance_id, b.instance_id);
  EXPECT_NE(a.p_c, b.p_c);  // equal with probability 1/509!
}

TEST(Keys, RopeKeepsQkWithinIdentity) {
  for (const test::Fixture& f : test::AllFixtures()) {
    SCOPED_TRACE(f.name);
    const ModelConfig& c = f.config;
    if (c.positions != PositionKind::kRope) continue;
    const ModelKeys k = GenerateKeys(c, "");
    for (const LayerKey& layer : k.layers) {
      for (const Permutation& w : layer.attention.qk_within) {
        EXPECT_EQ(w, IdentityPermutation(c.head_dim));
      }
    }
  }
}

TEST(Keys, NoRopeRandomizesQkWithin) {
  const ModelConfig c = Fixture("gpt2");
  ASSERT_NE(c.positions, PositionKind::kRope);
  ASSERT_EQ(c.head_dim, 16);
  const ModelKeys k = GenerateKeys(c, "");
  // Each vector is the identity with probability 1/16! ~ 4.8e-14.
  for (const LayerKey& layer : k.layers) {
    for (const Permutation& w : layer.attention.qk_within) {
      EXPECT_TRUE(IsPermutation(w, c.head_dim));
      EXPECT_NE(w, IdentityPermutation(c.head_dim));
    }
  }
}

// Checks that the derived index vectors of every layer map heads to heads:
// each new query slot reads one original query head, whose KV head is the one
// held by the slot's KV slot; Q and K share the within-head order of their
// group, O reads the same heads as Q with V's within-head order.
void ExpectHeadsMapToHeads(const ModelConfig& c, const ModelKeys& k) {
  const int64_t dh = c.head_dim, g = c.group_size();
  for (int l = 0; l < static_cast<int>(c.num_layers); ++l) {
    SCOPED_TRACE("layer " + std::to_string(l));
    const Permutation q = k.QPerm(c, l), kp = k.KPerm(c, l);
    const Permutation v = k.VPerm(c, l), o = k.OPerm(c, l);
    ASSERT_TRUE(IsPermutation(q, c.num_heads * dh));
    ASSERT_TRUE(IsPermutation(kp, c.num_kv_heads * dh));
    ASSERT_TRUE(IsPermutation(v, c.num_kv_heads * dh));
    ASSERT_TRUE(IsPermutation(o, c.num_heads * dh));
    for (int64_t m = 0; m < c.num_kv_heads; ++m) {
      const int64_t kv_head = kp[m * dh] / dh;
      for (int64_t t = 0; t < dh; ++t) {
        EXPECT_EQ(kp[m * dh + t] / dh, kv_head);
        EXPECT_EQ(v[m * dh + t] / dh, kv_head);  // V keeps K's head order
      }
    }
    for (int64_t j = 0; j < c.num_heads; ++j) {
      const int64_t m = j / g;
      const int64_t q_head = q[j * dh] / dh;
      EXPECT_EQ(q_head / g, kp[m * dh] / dh) << "query slot " << j;
      for (int64_t t = 0; t < dh; ++t) {
        EXPECT_EQ(q[j * dh + t] / dh, q_head) << "query slot " << j << " crosses heads";
        EXPECT_EQ(o[j * dh + t] / dh, q_head) << "o slot " << j;
        EXPECT_EQ(q[j * dh + t] % dh, kp[m * dh + t] % dh);  // shared w_qk
        EXPECT_EQ(o[j * dh + t] % dh, v[m * dh + t] % dh);   // shared w_v
        if (c.positions == PositionKind::kRope) {
          EXPECT_EQ(q[j * dh + t] % dh, t);
        }
      }
    }
  }
}

TEST(Keys, ProjectionPermutationsMapHeadsToHeads) {
  for (const test::Fixture& f : test::AllFixtures()) {
    SCOPED_TRACE(f.name);
    ExpectHeadsMapToHeads(f.config, GenerateKeys(f.config, ""));
  }
  // More heads per group than the fixtures have.
  ModelConfig c = Fixture("llama");
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.positions = PositionKind::kLearned;
  ExpectHeadsMapToHeads(c, GenerateKeys(c, ""));
}

ModelConfig TinyConfig() {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 5;
  c.hidden_size = 8;
  c.num_layers = 1;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 2;
  c.intermediate_size = 3;
  c.ffn = FfnKind::kGated;
  c.positions = PositionKind::kLearned;
  return c;
}

ModelKeys TinyKeys() {
  ModelKeys k;
  k.instance_id = "00112233445566778899aabbccddeeff";
  k.model_fingerprint = "tiny";
  k.model_type = "llama";
  k.p = {3, 1, 4, 0, 6, 2, 7, 5};
  k.p_c = {4, 2, 0, 1, 3};
  LayerKey layer;
  layer.attention.kv_heads = {1, 0};
  layer.attention.q_in_group = {{1, 0}, {0, 1}};
  layer.attention.qk_within = {{1, 0}, {0, 1}};
  layer.attention.v_within = {{0, 1}, {1, 0}};
  layer.ffn = {2, 0, 1};
  k.layers.push_back(layer);
  return k;
}

TEST(Keys, HandWorkedAttentionExample) {
  // n_h = 4, n_kv = 2, d_h = 2, G = 2, hk = [1, 0], r = [[1, 0], [0, 1]],
  // w_qk = [[1, 0], [0, 1]], w_v = [[0, 1], [1, 0]].
  // Query heads: hq = [1*2+1, 1*2+0, 0*2+0, 0*2+1] = [3, 2, 0, 1].
  //   p_q: slot 0 -> head 3 with w_qk[0]: 7, 6 | slot 1 -> head 2: 5, 4
  //        slot 2 -> head 0 with w_qk[1]: 0, 1 | slot 3 -> head 1: 2, 3
  //   p_k: slot 0 -> kv 1 with w_qk[0]: 3, 2 | slot 1 -> kv 0 with w_qk[1]: 0, 1
  //   p_v: slot 0 -> kv 1 with w_v[0]: 2, 3  | slot 1 -> kv 0 with w_v[1]: 1, 0
  //   p_o: head 3 with w_v[0]: 6, 7 | head 2: 4, 5 | head 0 with w_v[1]: 1, 0 | head 1: 3, 2
  const ModelConfig c = TinyConfig();
  const ModelKeys k = TinyKeys();
  ASSERT_NO_THROW(ValidateKeys(k, c));
  EXPECT_EQ(k.QPerm(c, 0), (Permutation{7, 6, 5, 4, 0, 1, 2, 3}));
  EXPECT_EQ(k.KPerm(c, 0), (Permutation{3, 2, 0, 1}));
  EXPECT_EQ(k.VPerm(c, 0), (Permutation{2, 3, 1, 0}));
  EXPECT_EQ(k.OPerm(c, 0), (Permutation{6, 7, 4, 5, 1, 0, 3, 2}));
  ExpectHeadsMapToHeads(c, k);

  // Under RoPE the same layout (with identity w_qk) is required.
  ModelConfig rope = c;
  rope.positions = PositionKind::kRope;
  std::string msg = ErrorOf([&] { ValidateKeys(k, rope); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("layer 0 attention qk_within[0]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rotary"), std::string::npos) << msg;
  ModelKeys k2 = k;
  k2.layers[0].attention.qk_within = {{0, 1}, {0, 1}};
  ASSERT_NO_THROW(ValidateKeys(k2, rope));
  EXPECT_EQ(k2.QPerm(rope, 0), (Permutation{6, 7, 4, 5, 0, 1, 2, 3}));
  EXPECT_EQ(k2.KPerm(rope, 0), (Permutation{2, 3, 0, 1}));
}

TEST(Keys, ProjectionPermutationsRejectBadInput) {
  const ModelConfig c = TinyConfig();
  ModelKeys k = TinyKeys();
  EXPECT_THROW(k.QPerm(c, 1), Error);
  EXPECT_THROW(k.OPerm(c, -1), Error);
  k.layers[0].attention.q_in_group[1] = {0, 0};
  std::string msg = ErrorOf([&] { k.QPerm(c, 0); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("q_in_group[1]"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------
// ValidateKeys

TEST(ValidateKeys, WrongHiddenSizeNamesVectorNotValues) {
  const ModelConfig c = Fixture("llama");
  const ModelKeys k = GenerateKeys(c, "");
  ModelConfig other = c;
  other.hidden_size = 32;
  std::string msg = ErrorOf([&] { ValidateKeys(k, other); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("keys: p:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hidden_size"), std::string::npos) << msg;
  // Sizes only (64 and 32): a dump of p would hold 64 integers.
  EXPECT_LE(CountIntegers(Without(msg, other.source)), 3) << msg;
  EXPECT_LT(msg.size(), 300u) << msg;
}

TEST(ValidateKeys, NamesTheBrokenVector) {
  const ModelConfig c = Fixture("llama");
  const ModelKeys good = GenerateKeys(c, "");

  ModelKeys k = good;
  k.layers[1].attention.v_within[1][3] = k.layers[1].attention.v_within[1][4];
  std::string msg = ErrorOf([&] { ValidateKeys(k, c); }, ErrorCode::kInvalidArgument);
  EXPECT_EQ(msg, "keys: layer 1 attention v_within[1]: not a permutation of 16");

  k = good;
  k.p_c[7] = 509;
  msg = ErrorOf([&] { ValidateKeys(k, c); }, ErrorCode::kInvalidArgument);
  EXPECT_EQ(msg, "keys: p_c: not a permutation of 509");

  k = good;
  k.layers.pop_back();
  msg = ErrorOf([&] { ValidateKeys(k, c); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("num_layers"), std::string::npos) << msg;

  k = good;
  k.layers[0].attention.q_in_group.pop_back();
  msg = ErrorOf([&] { ValidateKeys(k, c); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("layer 0 attention q_in_group"), std::string::npos) << msg;

  k = good;
  k.layers[0].ffn.push_back(160);
  msg = ErrorOf([&] { ValidateKeys(k, c); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("layer 0 ffn"), std::string::npos) << msg;
  EXPECT_NE(msg.find("intermediate_size"), std::string::npos) << msg;

  k = good;
  k.layers[1].attention.qk_within[0] = RandomPermutation(16);
  if (k.layers[1].attention.qk_within[0] == IdentityPermutation(16)) {
    std::swap(k.layers[1].attention.qk_within[0][0], k.layers[1].attention.qk_within[0][1]);
  }
  msg = ErrorOf([&] { ValidateKeys(k, c); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("layer 1 attention qk_within[0]: must be the identity"), std::string::npos)
      << msg;

  // Dense keys for a MoE model and the other way round.
  const ModelConfig mixtral = Fixture("mixtral");
  ModelKeys dense = GenerateKeys(c, "");
  dense.model_type = mixtral.model_type;
  EXPECT_THROW(ValidateKeys(dense, mixtral), Error);
  ModelKeys moe = GenerateKeys(mixtral, "");
  moe.model_type = c.model_type;
  EXPECT_THROW(ValidateKeys(moe, c), Error);
  // Keys of another model type.
  EXPECT_THROW(ValidateKeys(GenerateKeys(Fixture("qwen2"), ""), c), Error);
}

// ---------------------------------------------------------------------------
// Key files

TEST(KeyFile, RoundTripIsExactAndPrivate) {
  TempDir dir;
  for (const test::Fixture& f : test::AllFixtures()) {
    const std::string& arch = f.name;
    SCOPED_TRACE(arch);
    const ModelConfig& c = f.config;
    const ModelKeys k = GenerateKeys(c, "fp-" + arch);
    const std::string path = dir / (arch + ".keys");
    SaveKeys(path, k);
    EXPECT_EQ(FileMode(path), 0600u);
    const ModelKeys back = LoadKeys(path);
    ExpectKeysEqual(k, back);
    EXPECT_NO_THROW(ValidateKeys(back, c));

    auto f = SafetensorsFile::Open(path);
    EXPECT_EQ(f->metadata().at("format"), "stip-keys");
    EXPECT_EQ(f->metadata().at("version"), "1");
    EXPECT_EQ(f->metadata().at("instance_id"), k.instance_id);
    EXPECT_EQ(f->metadata().at("model_fingerprint"), "fp-" + arch);
    EXPECT_EQ(f->metadata().at("model_type"), c.model_type);
    EXPECT_EQ(f->metadata().at("num_layers"), std::to_string(c.num_layers));
    const TensorInfo& q = f->Get("layers.1.attn.q_in_group");
    EXPECT_EQ(q.dtype, DType::kI64);
    EXPECT_EQ(q.shape, (std::vector<int64_t>{c.num_kv_heads, c.group_size()}));
    EXPECT_EQ(f->Get("layers.0.attn.v_within").shape,
              (std::vector<int64_t>{c.num_kv_heads, c.head_dim}));
    if (c.ffn == FfnKind::kMoe) {
      EXPECT_EQ(f->Find("layers.0.ffn"), nullptr);
      EXPECT_EQ(f->Get("layers.1.moe.expert_ffn").shape,
                (std::vector<int64_t>{c.num_experts, c.intermediate_size}));
    } else {
      EXPECT_EQ(f->Get("layers.0.ffn").shape, (std::vector<int64_t>{c.intermediate_size}));
      EXPECT_EQ(f->Find("layers.0.moe.expert_order"), nullptr);
    }
  }
  // Only the key files: no temporary left behind.
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().extension(), ".keys") << e.path();
    ++files;
  }
  EXPECT_EQ(files, static_cast<int>(test::AllFixtures().size()));
}

TEST(KeyFile, OverwriteIsPrivateToo) {
  TempDir dir;
  const std::string path = dir / "k.keys";
  { std::ofstream(path) << "old"; }
  ::chmod(path.c_str(), 0644);
  SaveKeys(path, TinyKeys());
  EXPECT_EQ(FileMode(path), 0600u);
  ExpectKeysEqual(LoadKeys(path), TinyKeys());
}

TEST(KeyFile, RefusesToSaveBrokenKeys) {
  TempDir dir;
  ModelKeys k = TinyKeys();
  k.layers[0].attention.v_within[0] = {1, 1};
  std::string msg = ErrorOf([&] { SaveKeys(dir / "k.keys", k); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("v_within[0]"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir / "k.keys"));
}

// A key file's tensors as plain data, to be modified and rewritten.
struct RawTensor {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<int64_t> values;
};
struct RawFile {
  std::map<std::string, RawTensor> tensors;
  std::map<std::string, std::string> metadata;
};

RawFile ReadRaw(const std::string& path) {
  auto f = SafetensorsFile::Open(path);
  RawFile raw;
  raw.metadata = f->metadata();
  for (const TensorInfo& t : f->tensors()) {
    RawTensor r{t.dtype, t.shape, std::vector<int64_t>(static_cast<size_t>(t.numel()))};
    std::memcpy(r.values.data(), f->Data(t), t.nbytes);
    raw.tensors[t.name] = std::move(r);
  }
  return raw;
}

void WriteRaw(const std::string& path, const RawFile& raw) {
  std::vector<TensorBytes> list;
  for (const auto& [name, t] : raw.tensors) {
    list.push_back(TensorBytes{name, t.dtype, t.shape, t.values.data()});
  }
  WriteSafetensors(path, list, raw.metadata, 0600);
}

class CorruptKeyFile : public ::testing::Test {
 protected:
  void SetUp() override {
    keys_ = GenerateKeys(Fixture("llama"), "fp");
    SaveKeys(dir_ / "good.keys", keys_);
    raw_ = ReadRaw(dir_ / "good.keys");
  }
  // Writes `raw` and returns the message of LoadKeys' error, expecting `code`.
  std::string LoadError(const RawFile& raw, ErrorCode code) {
    const std::string path = dir_ / "bad.keys";
    WriteRaw(path, raw);
    return ErrorOf([&] { LoadKeys(path); }, code);
  }
  // The same, and that the message holds `needle`.
  void ExpectLoadError(const RawFile& raw, ErrorCode code, const std::string& needle) {
    std::string msg = LoadError(raw, code);
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }

  TempDir dir_;
  ModelKeys keys_;
  RawFile raw_;
};

TEST_F(CorruptKeyFile, RewrittenGoodFileLoads) {
  // The helpers themselves do not break anything.
  WriteRaw(dir_ / "copy.keys", raw_);
  ExpectKeysEqual(LoadKeys(dir_ / "copy.keys"), keys_);
}

TEST_F(CorruptKeyFile, DuplicateEntry) {
  RawFile raw = raw_;
  raw.tensors["p"].values[5] = raw.tensors["p"].values[9];
  std::string msg = LoadError(raw, ErrorCode::kDataLoss);
  EXPECT_NE(msg.find("p: not a permutation of 64"), std::string::npos) << msg;
  EXPECT_LE(CountIntegers(Without(msg, dir_.path())), 1) << msg;

  raw = raw_;
  raw.tensors["layers.1.attn.v_within"].values[16 + 2] = -1;
  msg = LoadError(raw, ErrorCode::kDataLoss);
  EXPECT_NE(msg.find("layer 1 attention v_within[1]: not a permutation of 16"), std::string::npos)
      << msg;
}

TEST_F(CorruptKeyFile, MissingTensor) {
  RawFile raw = raw_;
  raw.tensors.erase("layers.1.attn.qk_within");
  ExpectLoadError(raw, ErrorCode::kDataLoss, "missing tensor \"layers.1.attn.qk_within\"");

  raw = raw_;
  raw.tensors.erase("p_c");
  ExpectLoadError(raw, ErrorCode::kDataLoss, "\"p_c\"");
}

TEST_F(CorruptKeyFile, WrongFormat) {
  RawFile raw = raw_;
  raw.metadata["format"] = "pt";
  ExpectLoadError(raw, ErrorCode::kInvalidArgument, "format is \"pt\", expected \"stip-keys\"");

  raw = raw_;
  raw.metadata.erase("format");
  ExpectLoadError(raw, ErrorCode::kInvalidArgument, "not a STIP key file");
}

TEST_F(CorruptKeyFile, FutureVersion) {
  RawFile raw = raw_;
  raw.metadata["version"] = "2";
  ExpectLoadError(raw, ErrorCode::kUnimplemented, "version 2 is newer");
  raw.metadata["version"] = "one";
  ExpectLoadError(raw, ErrorCode::kInvalidArgument, "not understood");
  raw.metadata["version"] = "0";
  ExpectLoadError(raw, ErrorCode::kInvalidArgument, "version 0 is not supported");
}

TEST_F(CorruptKeyFile, WrongDtypeShapeOrExtraTensor) {
  RawFile raw = raw_;
  std::vector<int32_t> p32(raw.tensors["p"].values.begin(), raw.tensors["p"].values.end());
  {
    std::vector<TensorBytes> list;
    for (const auto& [name, t] : raw.tensors) {
      if (name == "p") {
        list.push_back(TensorBytes{name, DType::kI32, t.shape, p32.data()});
      } else {
        list.push_back(TensorBytes{name, t.dtype, t.shape, t.values.data()});
      }
    }
    WriteSafetensors(dir_ / "bad.keys", list, raw.metadata, 0600);
    std::string msg = ErrorOf([&] { LoadKeys(dir_ / "bad.keys"); }, ErrorCode::kDataLoss);
    EXPECT_NE(msg.find("dtype I32, expected I64"), std::string::npos) << msg;
  }

  // q_in_group with three rows for two KV heads.
  raw = raw_;
  RawTensor& q = raw.tensors["layers.0.attn.q_in_group"];
  q.shape = {3, 2};
  q.values = {0, 1, 1, 0, 0, 1};
  std::string msg = LoadError(raw, ErrorCode::kDataLoss);
  EXPECT_NE(msg.find("layer 0 attention q_in_group: has 3 vectors, expected 2"), std::string::npos)
      << msg;

  // v_within rows of a different head size than qk_within.
  raw = raw_;
  RawTensor& v = raw.tensors["layers.0.attn.v_within"];
  v.shape = {4, 8};
  for (int r = 0; r < 4; ++r) {
    for (int t = 0; t < 8; ++t) v.values[r * 8 + t] = t;
  }
  msg = LoadError(raw, ErrorCode::kDataLoss);
  EXPECT_NE(msg.find("v_within"), std::string::npos) << msg;

  // A matrix stored as a vector.
  raw = raw_;
  raw.tensors["layers.0.attn.qk_within"].shape = {32};
  msg = LoadError(raw, ErrorCode::kDataLoss);
  EXPECT_NE(msg.find("expected 2 dimensions"), std::string::npos) << msg;

  raw = raw_;
  raw.tensors["layers.2.attn.kv_heads"] = RawTensor{DType::kI64, {2}, {1, 0}};
  msg = LoadError(raw, ErrorCode::kDataLoss);
  EXPECT_NE(msg.find("unexpected tensor \"layers.2.attn.kv_heads\""), std::string::npos) << msg;

  raw = raw_;
  raw.metadata["num_layers"] = "3";
  msg = LoadError(raw, ErrorCode::kDataLoss);
  EXPECT_NE(msg.find("layers"), std::string::npos) << msg;

  raw = raw_;
  raw.metadata["num_layers"] = "999999999";
  msg = LoadError(raw, ErrorCode::kDataLoss);
  EXPECT_NE(msg.find("incomplete"), std::string::npos) << msg;
}

TEST_F(CorruptKeyFile, MissingFileOrGarbage) {
  EXPECT_EQ(ErrorOf([&] { LoadKeys(dir_ / "absent.keys"); }, ErrorCode::kNotFound).empty(), false);
  { std::ofstream(dir_ / "garbage.keys") << "not a safetensors file at all"; }
  EXPECT_THROW(LoadKeys(dir_ / "garbage.keys"), Error);
}

// ---------------------------------------------------------------------------
// The client's share

TEST(ClientKeys, ShareRoundTripHoldsOnlyPAndPc) {
  TempDir dir;
  const ModelKeys k = GenerateKeys(Fixture("gpt2"), "fp-gpt2");
  const ClientKeys share = ClientShare(k);
  EXPECT_EQ(share.instance_id, k.instance_id);
  EXPECT_EQ(share.model_fingerprint, "fp-gpt2");
  EXPECT_EQ(share.p, k.p);
  EXPECT_EQ(share.p_c, k.p_c);

  const std::string path = dir / "client.keys";
  SaveClientKeys(path, share);
  EXPECT_EQ(FileMode(path), 0600u);
  const ClientKeys back = LoadClientKeys(path);
  EXPECT_EQ(back.instance_id, share.instance_id);
  EXPECT_EQ(back.model_fingerprint, share.model_fingerprint);
  EXPECT_EQ(back.p, share.p);
  EXPECT_EQ(back.p_c, share.p_c);

  auto f = SafetensorsFile::Open(path);
  EXPECT_EQ(f->metadata().at("format"), "stip-client-keys");
  EXPECT_EQ(f->metadata().at("version"), "1");
  std::vector<std::string> names;
  for (const TensorInfo& t : f->tensors()) {
    EXPECT_EQ(t.name.find("layers."), std::string::npos) << t.name;
    names.push_back(t.name);
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"p", "p_c"}));
  // The raw bytes hold no layer tensor names either.
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes.find("layers."), std::string::npos);
}

TEST(ClientKeys, FilesAreNotInterchangeable) {
  TempDir dir;
  const ModelKeys k = GenerateKeys(Fixture("llama"), "fp");
  SaveKeys(dir / "full.keys", k);
  SaveClientKeys(dir / "client.keys", ClientShare(k));
  std::string msg =
      ErrorOf([&] { LoadClientKeys(dir / "full.keys"); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("expected \"stip-client-keys\""), std::string::npos) << msg;
  msg = ErrorOf([&] { LoadKeys(dir / "client.keys"); }, ErrorCode::kInvalidArgument);
  EXPECT_NE(msg.find("expected \"stip-keys\""), std::string::npos) << msg;

  // A client file with a smuggled extra tensor, or a broken p.
  RawFile raw = ReadRaw(dir / "client.keys");
  raw.tensors["layers.0.ffn"] = RawTensor{DType::kI64, {2}, {1, 0}};
  WriteRaw(dir / "extra.keys", raw);
  msg = ErrorOf([&] { LoadClientKeys(dir / "extra.keys"); }, ErrorCode::kDataLoss);
  EXPECT_NE(msg.find("unexpected tensor"), std::string::npos) << msg;
  raw = ReadRaw(dir / "client.keys");
  raw.tensors["p"].values[0] = raw.tensors["p"].values[1];
  WriteRaw(dir / "dup.keys", raw);
  msg = ErrorOf([&] { LoadClientKeys(dir / "dup.keys"); }, ErrorCode::kDataLoss);
  EXPECT_NE(msg.find("p: not a permutation of 64"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------
// Fingerprint and instance ids

TEST(Fingerprint, StableAndModelSpecific) {
  const std::string llama = FingerprintModel(FixtureDir("llama"));
  EXPECT_EQ(llama.size(), 64u);
  EXPECT_TRUE(IsLowerHex(llama)) << llama;
  EXPECT_EQ(FingerprintModel(FixtureDir("llama")), llama);
  EXPECT_NE(FingerprintModel(FixtureDir("qwen2")), llama);
  EXPECT_THROW(FingerprintModel(FixtureDir("absent")), Error);
}

class FingerprintCopy : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = dir_ / "llama";
    fs::create_directory(model_);
    for (const char* f : {"config.json", "model.safetensors"}) {
      fs::copy_file(FixtureDir("llama") + "/" + f, model_ + "/" + f);
    }
    original_ = FingerprintModel(FixtureDir("llama"));
  }
  TempDir dir_;
  std::string model_;
  std::string original_;
};

TEST_F(FingerprintCopy, CopyHasSameFingerprint) { EXPECT_EQ(FingerprintModel(model_), original_); }

TEST_F(FingerprintCopy, OneFlippedWeightByteChangesIt) {
  const std::string path = model_ + "/model.safetensors";
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  unsigned char len[8];
  f.read(reinterpret_cast<char*>(len), 8);
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = (header << 8) | len[i];
  const uint64_t size = fs::file_size(path);
  ASSERT_GT(size, 8 + header + 100);
  const auto pos = static_cast<std::streamoff>(8 + header + (size - 8 - header) / 2);
  f.seekg(pos);
  char byte = 0;
  f.read(&byte, 1);
  f.seekp(pos);
  byte = static_cast<char>(byte ^ 0x01);
  f.write(&byte, 1);
  f.close();
  ASSERT_TRUE(f.good() || !f.is_open());
  EXPECT_NE(FingerprintModel(model_), original_);
}

TEST_F(FingerprintCopy, ConfigBookkeepingIgnoredModelFieldsNot) {
  const std::string path = model_ + "/config.json";
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  auto rewrite = [&](const std::string& from, const std::string& to) {
    std::string t = text;
    const size_t pos = t.find(from);
    ASSERT_NE(pos, std::string::npos) << from;
    t.replace(pos, from.size(), to);
    std::ofstream(path, std::ios::trunc) << t;
  };
  // Saved by another transformers version, reformatted: same model.
  rewrite("\"transformers_version\": \"5.17.0\"", "\"transformers_version\": \"9.9.9\"");
  EXPECT_EQ(FingerprintModel(model_), original_);
  rewrite("\"hidden_act\": \"silu\",", "\"hidden_act\":\n\"silu\",");
  EXPECT_EQ(FingerprintModel(model_), original_);
  rewrite("{", "{\"_name_or_path\": \"/elsewhere\", \"stip\": {\"instance\": \"abc\"},");
  EXPECT_EQ(FingerprintModel(model_), original_);
  // A different model.
  rewrite("\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 1e-05");
  EXPECT_NE(FingerprintModel(model_), original_);
}

TEST(InstanceId, RandomHex) {
  const std::string a = NewInstanceId(), b = NewInstanceId();
  EXPECT_EQ(a.size(), 32u);
  EXPECT_TRUE(IsLowerHex(a)) << a;
  EXPECT_NE(a, b);
}

}  // namespace
}  // namespace stip
