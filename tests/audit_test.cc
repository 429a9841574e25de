// The security audit (common/audit): every attack succeeds fully against
// identity keys, stays at chance on unrelated random data, and reaches the
// figures docs/threat-model.md states on both demo models.
#include "common/audit/audit.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>

#include "common/arch/architecture.h"
#include "common/audit/audit_report.h"
#include "common/audit/base_weight_matching.h"
#include "common/audit/decoding_codebook.h"
#include "common/audit/distance_correlation.h"
#include "common/audit/key_space.h"
#include "common/audit/keyless_generation.h"
#include "common/audit/known_plaintext.h"
#include "common/audit/server_view.h"
#include "common/audit/vocabulary_matching.h"
#include "common/error.h"
#include "common/keys/model_keys.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/files.h"
#include "tests/process_util.h"
#include "tests/temp_dir.h"
#include "tests/test_util.h"

namespace stip {
namespace {

using json = nlohmann::ordered_json;

// Keys that permute nothing: every attack must then succeed completely.
ModelKeys IdentityKeys(const ModelConfig& c) {
  ModelKeys k = GenerateKeys(c, "identity");
  k.p = IdentityPermutation(c.hidden_size);
  k.p_c = IdentityPermutation(c.vocab_size);
  for (LayerKey& l : k.layers) {
    AttentionKey& a = l.attention;
    a.kv_heads = IdentityPermutation(static_cast<int64_t>(a.kv_heads.size()));
    for (auto* v : {&a.q_in_group, &a.qk_within, &a.v_within}) {
      for (Permutation& p : *v) p = IdentityPermutation(static_cast<int64_t>(p.size()));
    }
    l.ffn = IdentityPermutation(static_cast<int64_t>(l.ffn.size()));
  }
  return k;
}

std::vector<std::vector<int64_t>> Prompts(const std::string& model, int count) {
  auto tok = Tokenizer::FromDirectory(model);
  std::vector<std::vector<int64_t>> out;
  for (const std::string& t : DefaultAuditPrompts()) {
    if (static_cast<int>(out.size()) == count) break;
    out.push_back(tok->Encode(t));
  }
  return out;
}

// One demo model audited with fresh keys and with identity keys (built once).
struct Deployment {
  AuditSubject subject;
  ServerView view;
  std::vector<std::vector<int64_t>> decoded;  // x' read by vocabulary matching
};

const Deployment& Demo(const std::string& name, bool identity) {
  static std::map<std::pair<std::string, bool>, std::unique_ptr<Deployment>> cache;
  auto& slot = cache[{name, identity}];
  if (!slot) {
    c10::InferenceMode guard;
    const std::string dir = test::ModelDir(name);
    ModelConfig c = LoadModelConfig(dir);
    ModelKeys keys = identity ? IdentityKeys(c) : GenerateKeys(c, FingerprintModel(dir));
    slot = std::make_unique<Deployment>();
    slot->subject = LoadAuditSubject(dir, std::move(keys));
    slot->view = MakeServerView(slot->subject, Prompts(dir, 4), 16);
    slot->decoded = MatchVocabulary(slot->subject, slot->view);
  }
  return *slot;
}

class DemoModel : public ::testing::TestWithParam<std::string> {
 protected:
  c10::InferenceMode guard_;
};

// ---- 1. distance correlation -----------------------------------------------

TEST(DistanceCorrelation, MatchesAnIndependentImplementation) {
  // Values from a plain-Python implementation of Székely's V-statistic.
  at::Tensor x = at::tensor({1, 2, 2, 0, 3, 5, 4, 1, 6, 3, 0, 0}, at::kFloat).view({6, 2});
  at::Tensor y = at::tensor({2, 1, 7, 0, 4, 1}, at::kFloat);
  EXPECT_NEAR(DistanceCorrelation(x, y), 0.872538788041, 1e-5);
  at::Tensor a = at::tensor({1, 2, 3, 4, 5}, at::kFloat);
  EXPECT_NEAR(DistanceCorrelation(a, a * a), 0.986916044054, 1e-5);
}

TEST(DistanceCorrelation, OneForAnIsometryNearZeroForIndependentData) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  at::Tensor x = at::randn({2000, 3}, gen, at::kFloat);
  at::Tensor perm = at::tensor({2, 0, 1}, at::kLong);
  EXPECT_NEAR(DistanceCorrelation(x, x.index_select(1, perm) * 3 + 1), 1.0, 1e-4);
  EXPECT_LT(DistanceCorrelation(x, at::randn({2000, 3}, gen, at::kFloat)), 0.1);
  EXPECT_THROW(DistanceCorrelation(x, x.narrow(0, 0, 10)), Error);
}

TEST_P(DemoModel, DistanceCorrelationAsInThePaper) {
  const Deployment& d = Demo(GetParam(), false);
  DistanceCorrelationOptions o;
  o.hidden_sizes = {128, 512};
  o.vectors_per_size = 4;
  o.rows_per_tensor = 2;
  json r = AuditDistanceCorrelation(d.subject, d.view, o);
  // Per row / per vector: STIP is at the level of unrelated data (the paper's
  // figures); across tokens it is exactly 1.
  const json& pr = r["parameters"];
  EXPECT_LT(pr["mean_stip"].get<double>(), 0.3);
  EXPECT_LT(std::fabs(pr["mean_stip"].get<double>() - pr["mean_unrelated_row"].get<double>()), 0.1);
  const json& e = r["embeddings"];
  EXPECT_LT(e["per_vector"]["stip"].get<double>(), 0.3);
  EXPECT_NEAR(e["across_tokens"]["stip"].get<double>(), 1.0, 1e-4);
  EXPECT_GT(e["across_tokens"]["random_projection"].get<double>(), 0.8);
  // Per-vector figures fall with the hidden size, as in Fig. 6b.
  EXPECT_GT(r["hidden_size_sweep"][0]["per_vector_stip"].get<double>(),
            r["hidden_size_sweep"][1]["per_vector_stip"].get<double>());

  // Identity keys: the transformed data is the plaintext.
  const Deployment& id = Demo(GetParam(), true);
  json ri = AuditDistanceCorrelation(id.subject, id.view, o);
  EXPECT_NEAR(ri["parameters"]["mean_stip"].get<double>(), 1.0, 1e-4);
  EXPECT_NEAR(ri["embeddings"]["per_vector"]["stip"].get<double>(), 1.0, 1e-4);
}

// ---- 2. key space -------------------------------------------------------------

TEST(KeySpace, CountsTheLayoutsDrawn) {
  EXPECT_NEAR(Log2Factorial(4), std::log2(24.0), 1e-9);
  EXPECT_EQ(Log2Factorial(1), 0);
  ModelConfig llama = LoadModelConfig(test::ModelDir("kjv-llama"));  // RoPE, GQA 8/4, d_h 32
  KeySpace ks = MeasureKeySpace(llama);
  // By hand: p 256!, p_c 4096!, per layer 4! KV heads, (2!)^4 query heads,
  // q/k fixed by RoPE, (32!)^4 v, 688! ffn.
  const double lf256 = std::lgamma(257.0) / std::log(2.0);
  const double lf4096 = std::lgamma(4097.0) / std::log(2.0);
  const double lf32 = std::lgamma(33.0) / std::log(2.0);
  const double lf688 = std::lgamma(689.0) / std::log(2.0);
  const double want = lf256 + lf4096 + 4 * (std::log2(24.0) + 4 + 4 * lf32 + lf688);
  EXPECT_NEAR(ks.total_bits, want, 1e-6 * want);
  EXPECT_NEAR(ks.client_share_bits, lf256 + lf4096, 1e-6 * want);
  EXPECT_NEAR(ks.paper_bits, 3 * 4 * lf256, 1e-6 * ks.paper_bits);
  // Without RoPE the q/k features within a head are keyed too.
  ModelConfig learned = llama;
  learned.positions = PositionKind::kLearned;
  EXPECT_NEAR(MeasureKeySpace(learned).total_bits - ks.total_bits, 4 * 4 * lf32, 1e-3);
}

// ---- 3. known plaintext --------------------------------------------------------

TEST(KnownPlaintext, ColumnMatchingFailsOnUnrelatedData) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  at::Tensor x = at::randn({6, 200}, gen, at::kFloat);
  at::Tensor perm = at::randperm(200, gen, at::kLong);
  Permutation truth(200);
  for (int64_t i = 0; i < 200; ++i) truth[static_cast<size_t>(i)] = perm[i].item<int64_t>();
  EXPECT_EQ(RecoveryRate(RecoverPermutationByColumnMatching(x, x.index_select(1, perm)).p, truth),
            1.0);
  // x' unrelated to x: about 1/d right.
  at::Tensor other = at::randn({6, 200}, gen, at::kFloat);
  EXPECT_LT(RecoveryRate(RecoverPermutationByColumnMatching(x, other).p, truth), 0.05);
}

TEST_P(DemoModel, KnownPlaintextRecoversP) {
  const Deployment& d = Demo(GetParam(), false);
  json r = AuditKnownPlaintext(d.subject, d.view);
  EXPECT_EQ(r["p_recovery_rate"].get<double>(), 1.0);
  EXPECT_EQ(r["other_hidden_states_recovered_exactly"].get<double>(), 1.0);
  EXPECT_EQ(r["other_tokens_recovered"].get<double>(), 1.0);
  if (d.subject.config.tie_word_embeddings) {
    EXPECT_EQ(r["p_c_recovery_rate_via_tied_head"].get<double>(), 1.0);
  } else {
    EXPECT_TRUE(r["p_c_recovery_rate_via_tied_head"].is_null());
  }
  EXPECT_GT(r["p_c_entries_via_decoding"].get<int64_t>(), 10);

  const Deployment& id = Demo(GetParam(), true);
  EXPECT_EQ(AuditKnownPlaintext(id.subject, id.view)["p_recovery_rate"].get<double>(), 1.0);
}

// ---- 4. vocabulary matching ---------------------------------------------------

TEST(VocabularyMatching, ChanceOnUnrelatedRows) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(4);
  at::Tensor table = at::randn({500, 32}, gen, at::kFloat);
  std::vector<int64_t> pos(400, 0), ids(400);
  at::Tensor want = at::randint(0, 500, {400}, gen, at::kLong);
  for (int i = 0; i < 400; ++i) ids[static_cast<size_t>(i)] = want[i].item<int64_t>();
  at::Tensor rows = table.index_select(0, want);
  at::Tensor perm = at::randperm(32, gen, at::kLong);
  EXPECT_EQ(MatchVocabulary(rows.index_select(1, perm), pos, table, at::Tensor()), ids);
  std::vector<int64_t> got =
      MatchVocabulary(at::randn({400, 32}, gen, at::kFloat), pos, table, at::Tensor());
  int ok = 0;
  for (size_t i = 0; i < ids.size(); ++i) ok += got[i] == ids[i];
  EXPECT_LT(ok, 12);  // chance: 400/500 expected right
}

TEST_P(DemoModel, VocabularyMatchingReadsThePrompts) {
  const Deployment& d = Demo(GetParam(), false);
  json r = AuditVocabularyMatching(d.subject, d.view, d.decoded);
  EXPECT_GE(r["prompt_token_recovery_rate"].get<double>(), 0.99);
  const Deployment& id = Demo(GetParam(), true);
  EXPECT_EQ(AuditVocabularyMatching(id.subject, id.view, id.decoded)["prompt_token_recovery_rate"]
                .get<double>(),
            1.0);
}

// ---- 5. base-weight matching --------------------------------------------------

TEST_P(DemoModel, BaseWeightMatchingRecoversPAtOnePercentDrift) {
  const Deployment& d = Demo(GetParam(), false);
  BaseWeightOptions o;
  o.drift_levels = {0.01};
  json r = AuditBaseWeightMatching(d.subject, d.view, o);
  EXPECT_GE(r["against_drift"][0]["p_recovery_rate"].get<double>(), 0.99);
  EXPECT_GE(r["against_drift"][0]["p_c_recovery_rate"].get<double>(), 0.99);

  // Unrelated random "base weights" of the same shapes: chance.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(9);
  TensorMap random;
  for (const auto& [name, w] : d.subject.plain)
    random[name] = at::randn(w.sizes(), gen, at::kFloat);
  BaseMatch m = MatchBaseWeights(d.subject.config, random, d.view.weights);
  EXPECT_LT(RecoveryRate(m.p, d.subject.keys.p), 0.05);
  EXPECT_LT(RecoveryRate(m.p_c, d.subject.keys.p_c), 0.01);

  // Identity keys, no drift: everything.
  const Deployment& id = Demo(GetParam(), true);
  BaseMatch mi = MatchBaseWeights(id.subject.config, id.subject.plain, id.view.weights);
  EXPECT_EQ(RecoveryRate(mi.p, id.subject.keys.p), 1.0);
  EXPECT_EQ(RecoveryRate(mi.p_c, id.subject.keys.p_c), 1.0);
}

// ---- 6. decoding codebook ------------------------------------------------------

TEST(DecodingCodebook, ChanceOnUnrelatedObservations) {
  Permutation truth = RandomPermutation(1000);
  std::vector<CodebookObservation> linked, random;
  for (int i = 0; i < 300; ++i) {
    const int64_t j = static_cast<int64_t>(SecureUniform(1000));
    linked.push_back({j, truth[static_cast<size_t>(j)]});
    random.push_back({j, static_cast<int64_t>(SecureUniform(1000))});
  }
  DecodingCodebook good = BuildDecodingCodebook(linked, truth);
  EXPECT_EQ(good.correct, good.entries);
  DecodingCodebook bad = BuildDecodingCodebook(random, truth);
  EXPECT_GT(bad.entries, 100);
  EXPECT_LT(bad.correct, 5);  // chance: entries/1000
}

TEST_P(DemoModel, DecodingCodebookLearnsPc) {
  const Deployment& d = Demo(GetParam(), false);
  DecodingCodebook book =
      BuildDecodingCodebook(ObserveDecoding(d.view, d.decoded), d.subject.keys.p_c);
  // Every generated token the client fed back names one entry, all of them right.
  std::set<int64_t> distinct;
  for (const auto& g : d.view.generations) {
    for (size_t t = g.prompt.size(); t + 1 < g.ids.size(); ++t) distinct.insert(g.ids[t]);
  }
  EXPECT_EQ(book.correct, book.entries);
  EXPECT_EQ(book.entries, static_cast<int64_t>(distinct.size()));
  EXPECT_GT(book.entries, 10);
  // Identity keys: the index of the largest logit is the token itself.
  const Deployment& id = Demo(GetParam(), true);
  DecodingCodebook ib =
      BuildDecodingCodebook(ObserveDecoding(id.view, id.decoded), id.subject.keys.p_c);
  EXPECT_GT(ib.entries, 10);
  EXPECT_EQ(ib.correct, ib.entries);
  // The same observations decoded wrongly (next token shifted): no entry right.
  std::vector<CodebookObservation> obs = ObserveDecoding(d.view, d.decoded);
  for (auto& o : obs) o.next_token = (o.next_token + 1) % d.subject.config.vocab_size;
  EXPECT_EQ(BuildDecodingCodebook(obs, d.subject.keys.p_c).correct, 0);
}

// ---- 7. keyless generation (Table 4) -------------------------------------------

TEST_P(DemoModel, KeylessGenerationIsAtChance) {
  const Deployment& d = Demo(GetParam(), false);
  KeylessResult r = GenerateWithoutKeys(d.subject, d.view, 16);
  ASSERT_GE(r.positions, 40);
  EXPECT_LE(static_cast<double>(r.agreeing) / static_cast<double>(r.positions), 0.05);
  const Deployment& id = Demo(GetParam(), true);
  KeylessResult ri = GenerateWithoutKeys(id.subject, id.view, 16);
  EXPECT_EQ(ri.agreeing, ri.positions);
}

INSTANTIATE_TEST_SUITE_P(Demo, DemoModel, ::testing::Values("kjv-llama", "kjv-gpt2"));

// ---- the whole audit and its report -------------------------------------------

TEST(Audit, RunsAndWritesItsReport) {
  AuditOptions o;
  o.model_dir = test::ModelDir("kjv-gpt2");
  o.prompts = {"And God said,", "The LORD is my shepherd;"};
  o.max_new_tokens = 8;
  o.progress = false;
  o.distance_correlation.hidden_sizes = {128, 256};
  o.base_weights.drift_levels = {0, 0.01};
  o.base_weights.base_dir = test::ModelDir("kjv-gpt2");  // the base = the model itself
  ModelConfig c = LoadModelConfig(o.model_dir);
  json r = RunAudit(o, GenerateKeys(c, FingerprintModel(o.model_dir)));
  for (const char* k :
       {"distance_correlation", "key_space", "known_plaintext", "vocabulary_matching",
        "base_weight_matching", "decoding_codebook", "keyless_generation"}) {
    ASSERT_TRUE(r.contains(k)) << k;
    EXPECT_TRUE(r[k].contains("attacker_knowledge")) << k;
  }
  EXPECT_EQ(r["base_weight_matching"]["given_base"]["p_recovery_rate"].get<double>(), 1.0);
  EXPECT_EQ(r["base_weight_matching"]["given_base"]["mean_relative_drift"].get<double>(), 0.0);

  test::TempDir dir("stip-audit");
  AuditReportFiles files = WriteAuditReport(r, dir / "report.md");
  std::string md = ReadFile(dir / "report.md");
  EXPECT_NE(md.find("| 4 vocabulary matching |"), std::string::npos);
  EXPECT_NE(md.find("## 7. Keyless generation"), std::string::npos);
  if (files.plot_note.empty()) {
    EXPECT_TRUE(PathExists(dir / "report-distance-correlation.png"));
    EXPECT_TRUE(PathExists(dir / "report-drift.png"));
    EXPECT_NE(md.find("](report-drift.png)"), std::string::npos);
  } else {
    EXPECT_NE(md.find("gnuplot"), std::string::npos);
  }
  // No key material: no list in the result is as long as a permutation.
  std::function<size_t(const json&)> longest = [&](const json& j) -> size_t {
    size_t n = j.is_array() ? j.size() : 0;
    if (j.is_structured()) {
      for (const auto& item : j) n = std::max(n, longest(item));
    }
    return n;
  };
  EXPECT_LT(longest(r), static_cast<size_t>(c.hidden_size));
}

// The command refuses bad input before any work, naming the problem.
TEST(AuditCommand, RefusesBadInput) {
  test::TempDir dir("stip-audit-cli");
  const std::string bin = STIP_DEVELOPER_BIN;
  const std::string llama = test::ModelDir("kjv-llama"), gpt2 = test::ModelDir("kjv-gpt2");
  auto r = test::Run({bin, "audit", "--model", llama, "--base", gpt2, "--quiet"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("does not have the audited model's shape"), std::string::npos) << r.err;
  ASSERT_EQ(test::Run({bin, "keygen", "--model", gpt2, "--keys", dir / "gpt2.keys"}).exit_code, 0);
  r = test::Run({bin, "audit", "--model", llama, "--keys", dir / "gpt2.keys", "--quiet"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("different model"), std::string::npos) << r.err;
  r = test::Run({bin, "audit", "--model", llama, "--keys", dir / "missing.keys", "--quiet"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no such key file"), std::string::npos) << r.err;
  dir.Write("empty.txt", "\n  \n");
  r = test::Run({bin, "audit", "--model", llama, "--prompts", dir / "empty.txt", "--quiet"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("no prompts"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace stip
