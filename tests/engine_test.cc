// The engine against Hugging Face transformers: embeddings, logits and greedy
// generations of the reference fixtures (random-init checkpoints saved by
// transformers 5.17, references computed on CPU in fp32) and of the demo models.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/arch/architecture.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/tokenizer/tokenizer.h"
#include "tests/fixtures.h"
#include "tests/test_util.h"

namespace stip {
namespace {

using test::FixtureDir;
using test::MaxAbsDiff;
using test::ModelDir;
using test::Reference;
using test::ToIds;

constexpr double kTol = 1e-4;

class FixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = FixtureDir(GetParam());
    lm_ = CausalLM::Load(dir_);
    ids_ = Reference(dir_, "input_ids");
  }
  std::vector<int64_t> Row(int64_t b) const { return ToIds(ids_[b]); }

  std::string dir_;
  CausalLM lm_;
  at::Tensor ids_;
};

TEST_P(FixtureTest, ClientPartReproducesEmbeddings) {
  at::Tensor ref = Reference(dir_, "embeddings");
  for (int64_t b = 0; b < ids_.size(0); ++b) {
    at::Tensor x = lm_.client->Embed(Row(b), 0);
    EXPECT_LE(MaxAbsDiff(x, ref[b]), kTol) << "row " << b;
  }
}

TEST_P(FixtureTest, ServerPartReproducesLogitsBatched) {
  at::Tensor ref = Reference(dir_, "logits");
  std::vector<KvCache> caches;
  std::vector<SequenceStep> batch;
  for (int64_t b = 0; b < ids_.size(0); ++b) caches.push_back(lm_.server->NewCache());
  for (int64_t b = 0; b < ids_.size(0); ++b) {
    batch.push_back({lm_.client->Embed(Row(b), 0), &caches[static_cast<size_t>(b)], true});
  }
  std::vector<at::Tensor> logits = lm_.server->Forward(batch);
  ASSERT_EQ(logits.size(), static_cast<size_t>(ids_.size(0)));
  for (int64_t b = 0; b < ids_.size(0); ++b) {
    double d = MaxAbsDiff(logits[static_cast<size_t>(b)], ref[b]);
    EXPECT_LE(d, kTol) << "row " << b;
    EXPECT_TRUE(at::equal(logits[static_cast<size_t>(b)].argmax(-1), ref[b].argmax(-1)));
  }
}

TEST_P(FixtureTest, GreedyGenerationMatchesReference) {
  at::Tensor ref = Reference(dir_, "greedy_ids");
  GreedyOptions opt;
  opt.max_new_tokens = static_cast<int>(ref.size(0) - ids_.size(1));
  opt.eos_ids = lm_.client->config().eos_token_ids;
  auto out = GreedyGenerate(*lm_.client, *lm_.server, {Row(0)}, opt);
  EXPECT_EQ(out[0], ToIds(ref));
}

TEST_P(FixtureTest, BatchedGreedyGenerationMatchesReference) {
  at::Tensor ref = Reference(dir_, "greedy_ids_batch");
  GreedyOptions opt;
  opt.max_new_tokens = static_cast<int>(ref.size(1) - ids_.size(1));
  opt.eos_ids = lm_.client->config().eos_token_ids;
  auto out = GreedyGenerate(*lm_.client, *lm_.server, {Row(0), Row(1)}, opt);
  EXPECT_EQ(out[0], ToIds(ref[0]));
  EXPECT_EQ(out[1], ToIds(ref[1]));
}

// Cached decoding equals full recomputation at every position, for prefill
// followed by steps of one and of several positions.
TEST_P(FixtureTest, CachedDecodeEqualsFullRecomputation) {
  std::vector<int64_t> seq = ToIds(Reference(dir_, "greedy_ids"));
  KvCache full_cache = lm_.server->NewCache();
  at::Tensor full =
      lm_.server->Forward({{lm_.client->Embed(seq, 0), &full_cache, true}})[0];  // [S, V]
  for (int64_t chunk : {1, 3}) {
    KvCache cache = lm_.server->NewCache();
    int64_t pos = 0;
    const int64_t prefill = 5;
    while (pos < static_cast<int64_t>(seq.size())) {
      int64_t t = pos == 0 ? prefill : std::min<int64_t>(chunk, seq.size() - pos);
      std::vector<int64_t> ids(seq.begin() + pos, seq.begin() + pos + t);
      at::Tensor logits = lm_.server->Forward({{lm_.client->Embed(ids, pos), &cache, true}})[0];
      EXPECT_LE(MaxAbsDiff(logits, full.narrow(0, pos, t)), 1e-5)
          << "chunk " << chunk << " at position " << pos;
      pos += t;
    }
    EXPECT_EQ(cache.length(), static_cast<int64_t>(seq.size()));
  }
}

// Sequences of different lengths and cache states in one forward pass give
// the same logits as each alone.
TEST_P(FixtureTest, MixedBatchEqualsSeparateForwards) {
  std::vector<int64_t> a = Row(0), b = Row(1);
  b.resize(4);
  KvCache ca = lm_.server->NewCache(), cb = lm_.server->NewCache();
  // a: prefill 7 first, so that the batch mixes a decode of 4 with a prefill of 4.
  std::vector<int64_t> a0(a.begin(), a.begin() + 7), a1(a.begin() + 7, a.end());
  lm_.server->Forward({{lm_.client->Embed(a0, 0), &ca, false}});
  auto mixed = lm_.server->Forward(
      {{lm_.client->Embed(a1, 7), &ca, true}, {lm_.client->Embed(b, 0), &cb, true}});
  KvCache sa = lm_.server->NewCache(), sb = lm_.server->NewCache();
  at::Tensor alone_a = lm_.server->Forward({{lm_.client->Embed(a, 0), &sa, true}})[0];
  at::Tensor alone_b = lm_.server->Forward({{lm_.client->Embed(b, 0), &sb, true}})[0];
  EXPECT_LE(MaxAbsDiff(mixed[0], alone_a.narrow(0, 7, 4)), 1e-5);
  EXPECT_LE(MaxAbsDiff(mixed[1], alone_b), 1e-5);
}

TEST_P(FixtureTest, MalformedStepIsRejectedWithoutTouchingTheCache) {
  KvCache cache = lm_.server->NewCache();
  const int64_t d = lm_.server->config().hidden_size;
  for (auto shape : std::vector<std::vector<int64_t>>{{3, d + 1}, {0, d}, {d}}) {
    try {
      lm_.server->Forward({{at::zeros(shape), &cache, false}});
      FAIL() << "accepted hidden states of shape " << ShapeString(shape);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("hidden states"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(cache.length(), 0);
  EXPECT_THROW(lm_.client->Embed(std::vector<int64_t>{lm_.client->config().vocab_size}, 0), Error);
  EXPECT_THROW(lm_.client->Embed(std::vector<int64_t>{-1}, 0), Error);
}

INSTANTIATE_TEST_SUITE_P(HfReference, FixtureTest, ::testing::ValuesIn(test::CausalFixtures()),
                         test::ParamName());

// ---- demo models: fp16 weights computed in fp32 ------------------------------

class DemoModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DemoModelTest, Greedy40TokensMatchReferenceIdsAndText) {
  const std::string dir = ModelDir(GetParam());
  CausalLM lm = CausalLM::Load(dir);
  auto tok = Tokenizer::FromDirectory(dir);
  std::vector<int64_t> prompt = ToIds(Reference(dir, "input_ids")[0]);
  EXPECT_EQ(tok->Encode("And God said,"), prompt);
  at::Tensor emb = Reference(dir, "embeddings")[0];
  EXPECT_LE(MaxAbsDiff(lm.client->Embed(prompt, 0), emb), kTol);
  KvCache cache = lm.server->NewCache();
  at::Tensor logits = lm.server->Forward({{lm.client->Embed(prompt, 0), &cache, true}})[0];
  // Logits of these trained models reach ~16: scale the tolerance (docs/transform.md, numerics).
  at::Tensor ref_logits = Reference(dir, "logits")[0];
  EXPECT_LE(MaxAbsDiff(logits, ref_logits),
            1e-3 * std::max(1.0, ref_logits.abs().max().item<double>()));

  GreedyOptions opt;
  opt.max_new_tokens = 40;
  opt.eos_ids = lm.client->config().eos_token_ids;
  auto out = GreedyGenerate(*lm.client, *lm.server, {prompt}, opt);
  std::vector<int64_t> ref = ToIds(Reference(dir, "greedy_ids"));
  EXPECT_EQ(out[0], ref);
  std::ifstream in(dir + "/reference.json");
  nlohmann::json meta = nlohmann::json::parse(in);
  EXPECT_EQ(tok->Decode(out[0], /*skip_special=*/true), meta["greedy_text"].get<std::string>());
}

INSTANTIATE_TEST_SUITE_P(Models, DemoModelTest, ::testing::Values("kjv-gpt2", "kjv-llama"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) {
                             if (ch == '-') ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace stip
