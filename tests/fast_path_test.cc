// The engine's fast paths equal the plain formulations they replace:
// attention without a mask for decode steps and with skipped out-of-window
// keys, RoPE with prepared tables, matrix-vector products for single rows,
// fused projections; and the process-wide CPU settings (threads, OpenBLAS
// kernels) keep the engine within the Hugging Face tolerance.
#include <gtest/gtest.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/arch/architecture.h"
#include "common/engine/causal_lm.h"
#include "common/engine/cpu_runtime.h"
#include "common/engine/layers.h"
#include "common/engine/sampler.h"
#include "tests/test_util.h"

namespace stip {
namespace {

using test::FixtureDir;
using test::MaxAbsDiff;
using test::Reference;
using test::ReferenceAttention;
using test::ToIds;

TEST(FastPathTest, AttentionEqualsMaskedReference) {
  at::manual_seed(3);
  const int64_t d_h = 8, n_kv = 2;
  for (int64_t group : {1, 3}) {
    for (int64_t t : {1, 2, 5}) {
      for (int64_t past : {0, 1, 4, 11}) {
        for (std::optional<int64_t> window :
             {std::optional<int64_t>(), std::optional<int64_t>(1), std::optional<int64_t>(3),
              std::optional<int64_t>(6), std::optional<int64_t>(40)}) {
          const int64_t s = past + t;
          // Keys and values as the cache hands them out: a prefix of a larger buffer.
          at::Tensor kbuf = at::randn({n_kv, s + 7, d_h}), vbuf = at::randn({n_kv, s + 7, d_h});
          at::Tensor keys = kbuf.narrow(1, 0, s), values = vbuf.narrow(1, 0, s);
          at::Tensor q = at::randn({t, n_kv * group, d_h});
          at::Tensor want = ReferenceAttention(q, keys, values, past, window, 0.35);
          at::Tensor got = CausalAttention(q, keys, values, past, window, 0.35);
          ASSERT_EQ(got.sizes(), want.sizes());
          EXPECT_LE(MaxAbsDiff(got, want), 1e-6)
              << "group " << group << " t " << t << " past " << past << " window "
              << (window ? std::to_string(*window) : "none");
        }
      }
    }
  }
}

TEST(FastPathTest, RopeTablesEqualApplyRope) {
  at::manual_seed(4);
  nlohmann::json j = {{"model_type", "llama"},    {"vocab_size", 64},
                      {"hidden_size", 32},        {"intermediate_size", 64},
                      {"num_hidden_layers", 1},   {"num_attention_heads", 4},
                      {"num_key_value_heads", 2}, {"max_position_embeddings", 128}};
  ModelConfig c = ParseModelConfig(j.dump(), "test");
  at::Tensor inv = RopeInverseFrequencies(c, at::kCPU);
  at::Tensor pos = at::tensor(std::vector<int64_t>{0, 1, 2, 7, 50, 51}, at::kLong);
  auto [cos, sin] = RopeCosSin(inv, pos, at::kFloat);
  RopeTables tables = MakeRopeTables(inv, pos, at::kFloat);
  // A strided view, as the fused q|k|v projection hands it over.
  at::Tensor qkv = at::randn({6, 8, c.head_dim});
  at::Tensor x = qkv.narrow(1, 0, 6);
  EXPECT_LE(MaxAbsDiff(ApplyRopeTables(x, tables.cos, tables.sin_signed), ApplyRope(x, cos, sin)),
            1e-6);
}

TEST(FastPathTest, SingleRowLinearEqualsGemm) {
  at::manual_seed(5);
  at::Tensor w = at::randn({300, 96}), b = at::randn({300}), x = at::randn({1, 96});
  EXPECT_LE(MaxAbsDiff(Linear(x, w, b), at::linear(x, w, b)), 1e-5);
  EXPECT_LE(MaxAbsDiff(Linear(x, w), at::linear(x, w)), 1e-5);
  // A row view of a bigger activation, and a row-slice view of a fused weight.
  at::Tensor xs = at::randn({4, 96}).narrow(0, 3, 1);
  at::Tensor wf = at::randn({500, 96}).narrow(0, 200, 300);
  EXPECT_LE(MaxAbsDiff(Linear(xs, wf), at::linear(xs, wf)), 1e-5);
}

TEST(FastPathTest, GreedyPicksWhatArgmaxPicks) {
  at::manual_seed(6);
  Sampler greedy(SamplingOptions{true, 1, 0, 1, 1, 0});
  for (int i = 0; i < 20; ++i) {
    at::Tensor o = at::randn({1000});
    EXPECT_EQ(greedy.Next(o, {}), o.argmax().item<int64_t>());
  }
  at::Tensor ties = at::zeros({10});
  ties[3] = 2;
  ties[7] = 2;
  EXPECT_EQ(greedy.Next(ties, {}), 3);  // the first of equal maxima
  ties[5] = std::numeric_limits<float>::quiet_NaN();
  ties[8] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(greedy.Next(ties, {}), ties.argmax().item<int64_t>());  // NaN counts as largest
  at::Tensor strided = at::randn({50, 4}).select(1, 2);             // not contiguous
  EXPECT_EQ(greedy.Next(strided, {}), strided.argmax().item<int64_t>());
}

// Prefill of two positions, then one position per step (the decode path),
// against transformers' logits.
void ExpectReferenceLogits(const std::string& arch, const LoadOptions& options) {
  const std::string dir = FixtureDir(arch);
  CausalLM lm = CausalLM::Load(dir, options);
  at::Tensor ref = Reference(dir, "logits");
  std::vector<int64_t> row = ToIds(Reference(dir, "input_ids")[0]);
  KvCache cache = lm.server->NewCache();
  std::vector<int64_t> head(row.begin(), row.begin() + 2);
  at::Tensor first = lm.server->Forward({{lm.client->Embed(head, 0), &cache, true}})[0];
  EXPECT_LE(MaxAbsDiff(first.cpu(), ref[0].narrow(0, 0, 2)), 1e-4) << arch;
  for (size_t i = 2; i < row.size(); ++i) {
    at::Tensor x = lm.client->Embed(std::vector<int64_t>{row[i]}, static_cast<int64_t>(i));
    at::Tensor o = lm.server->Forward({{x, &cache, false}})[0];
    EXPECT_LE(MaxAbsDiff(o.cpu(), ref[0].narrow(0, static_cast<int64_t>(i), 1)), 1e-4)
        << arch << " position " << i;
  }
}

// After ConfigureCpuRuntime (threads, OpenBLAS kernels for this CPU) the
// engine still reproduces transformers.
TEST(FastPathTest, CpuRuntimeKeepsReferenceLogits) {
  const CpuRuntime& rt = ConfigureCpuRuntime();
  EXPECT_GE(rt.threads, 1);
  EXPECT_GE(rt.aten_threads, 1);
  EXPECT_EQ(&rt, &ConfigureCpuRuntime(7));  // once per process
  InitComputeThread();
  for (const std::string arch : {"gpt2", "llama", "qwen2", "mixtral"}) {
    ExpectReferenceLogits(arch, LoadOptions{});
  }
}

// On a GPU (fp32; LibTorch 2.x: scaled_dot_product_attention) likewise.
TEST(FastPathTest, CudaKeepsReferenceLogits) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  LoadOptions options;
  options.device = at::Device(at::kCUDA, 0);
  for (const std::string arch : {"gpt2", "llama", "qwen2", "mixtral"}) {
    ExpectReferenceLogits(arch, options);
  }
}

}  // namespace
}  // namespace stip
