// The pooled KV cache and batched attention: slots are a budget (taken,
// refused when full, returned when a cache goes), a slot never grows past its
// capacity, and one attention call over a batch of pooled sequences equals the
// masked reference attention of each sequence on its own -- for ragged decode
// steps, equal-length prompts, windows, grouped heads, and slots in any order.
// On a model: batched greedy decoding with a pool equals the Hugging Face
// reference (engine_test checks that too) and the per-sequence caches.
#include <gtest/gtest.h>

#include <cstdlib>
#include <limits>
#include <optional>

#include "common/engine/causal_lm.h"
#include "common/engine/decode_graphs.h"
#include "common/engine/kv_cache.h"
#include "common/engine/pooled_attention.h"
#include "common/error.h"
#include "tests/test_util.h"

namespace stip {
namespace {

using test::MaxAbsDiff;
using test::ReferenceAttention;

TEST(KvPoolTest, SlotsAreABudget) {
  auto pool = KvPool::Create(2, 1, 4, /*slots=*/2, /*capacity=*/8, at::kFloat, at::kCPU);
  EXPECT_EQ(pool->free_slots(), 2);
  EXPECT_EQ(pool->bytes(), 2 * 2 * 2 * 8 * 4 * 4);
  {
    KvCache a = pool->Acquire();
    KvCache b = pool->Acquire();
    EXPECT_NE(a.slot(), b.slot());
    EXPECT_EQ(pool->free_slots(), 0);
    try {
      pool->Acquire();
      FAIL() << "a third cache from a pool of two";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kResourceExhausted);
      EXPECT_NE(std::string(e.what()).find("all 2 sequence slots"), std::string::npos) << e.what();
    }
    KvCache copy = a;  // a handle: the slot stays taken while any copy lives
    a = KvCache();
    EXPECT_EQ(pool->free_slots(), 0);
  }
  EXPECT_EQ(pool->free_slots(), 2);
}

TEST(KvPoolTest, SlotNeverGrowsPastCapacity) {
  auto pool = KvPool::Create(1, 1, 4, 1, /*capacity=*/5, at::kFloat, at::kCPU);
  KvCache c = pool->Acquire();
  at::Tensor kv = at::randn({5, 1, 4});
  auto [k, v] = c.Append(0, kv, kv);
  EXPECT_EQ(k.size(1), 5);
  c.Commit(5);
  try {
    c.Append(0, kv.narrow(0, 0, 1), kv.narrow(0, 0, 1));
    FAIL() << "a sixth position in a slot of five";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kResourceExhausted);
    EXPECT_NE(std::string(e.what()).find("exceeds the KV cache pool's 5"), std::string::npos);
  }
  c.Clear();  // keeps the slot, forgets the positions
  EXPECT_EQ(c.length(), 0);
  EXPECT_EQ(pool->free_slots(), 0);
}

struct Case {
  std::vector<int64_t> pasts;
  int64_t t;
};

TEST(KvPoolTest, BatchedAttentionEqualsEachSequenceAlone) {
  at::manual_seed(11);
  const int64_t d_h = 8, n_kv = 2, capacity = 24;
  const std::vector<Case> cases = {
      {{0, 3, 7, 2}, 1},  // ragged decode
      {{5, 5, 5}, 1},     // decode at one length (no mask)
      {{0, 0, 0}, 4},     // prompts from position 0
      {{6, 6}, 3},        // equal chunks after equal pasts
  };
  for (int64_t group : {1, 3}) {
    for (std::optional<int64_t> window :
         {std::optional<int64_t>(), std::optional<int64_t>(2), std::optional<int64_t>(5)}) {
      for (const Case& cs : cases) {
        for (bool shuffled : {false, true}) {
          const int64_t b = static_cast<int64_t>(cs.pasts.size());
          auto pool = KvPool::Create(1, n_kv, d_h, b + 2, capacity, at::kFloat, at::kCPU);
          std::vector<KvCache> all;
          for (int64_t i = 0; i < b + 2; ++i) all.push_back(pool->Acquire());
          // Sequences in slots b+1, b, ... (shuffled) or 0, 1, ... (consecutive).
          std::vector<int64_t> slots;
          for (int64_t i = 0; i < b; ++i) slots.push_back(shuffled ? b + 1 - i : i);
          // Earlier positions of each sequence, and garbage past its end.
          pool->keys(0).normal_();
          pool->values(0).normal_();
          at::Tensor q = at::randn({b * cs.t, n_kv * group, d_h});
          at::Tensor k = at::randn({b * cs.t, n_kv, d_h});
          at::Tensor v = at::randn({b * cs.t, n_kv, d_h});
          std::vector<at::Tensor> want;
          for (int64_t i = 0; i < b; ++i) {
            const int64_t past = cs.pasts[static_cast<size_t>(i)];
            at::Tensor keys = pool->keys(0)[slots[static_cast<size_t>(i)]].narrow(1, 0, past);
            at::Tensor values = pool->values(0)[slots[static_cast<size_t>(i)]].narrow(1, 0, past);
            keys = at::cat({keys, k.narrow(0, i * cs.t, cs.t).transpose(0, 1)}, 1);
            values = at::cat({values, v.narrow(0, i * cs.t, cs.t).transpose(0, 1)}, 1);
            want.push_back(
                ReferenceAttention(q.narrow(0, i * cs.t, cs.t), keys, values, past, window, 0.3));
          }
          ASSERT_TRUE(
              PooledBatch::Qualifies(std::vector<int64_t>(cs.pasts.size(), cs.t), cs.pasts));
          PooledBatch batch(*pool, slots, cs.pasts, cs.t, at::kCPU);
          at::Tensor got = batch.Attend(0, q, k, v, window, 0.3);
          ASSERT_EQ(got.sizes(), (std::vector<int64_t>{b * cs.t, n_kv * group * d_h}));
          for (int64_t i = 0; i < b; ++i) {
            EXPECT_LE(MaxAbsDiff(got.narrow(0, i * cs.t, cs.t), want[static_cast<size_t>(i)]), 1e-5)
                << "group " << group << " window " << (window ? *window : -1) << " t " << cs.t
                << " sequence " << i << (shuffled ? " shuffled" : "");
            // The new keys landed in the sequence's slot.
            const int64_t past = cs.pasts[static_cast<size_t>(i)];
            EXPECT_TRUE(
                at::equal(pool->keys(0)[slots[static_cast<size_t>(i)]].narrow(1, past, cs.t),
                          k.narrow(0, i * cs.t, cs.t).transpose(0, 1)));
          }
        }
      }
    }
  }
}

TEST(KvPoolTest, MixedLengthsDoNotQualify) {
  EXPECT_FALSE(PooledBatch::Qualifies({1}, {4}));        // one sequence: its own path
  EXPECT_FALSE(PooledBatch::Qualifies({3, 1}, {0, 5}));  // a prompt beside a decode step
  EXPECT_FALSE(PooledBatch::Qualifies({3, 3}, {0, 2}));  // chunks after different pasts
  EXPECT_TRUE(PooledBatch::Qualifies({1, 1, 1}, {0, 9, 4}));
}

// A model's forward over pooled caches equals its forward over per-sequence
// caches: prompts of different lengths (per-sequence path inside the pool),
// then ragged decode steps (batched path).
// (On a GPU too, where there is one: fp32, scaled_dot_product_attention.)
TEST(KvPoolTest, ModelForwardPooledEqualsPerSequence) {
  std::vector<at::Device> devices = {at::kCPU};
  if (at::hasCUDA()) devices.push_back(at::Device(at::kCUDA, 0));
  for (const at::Device& device : devices) {
    for (const std::string arch : {"gpt2", "llama", "qwen2", "mixtral"}) {
      LoadOptions options;
      options.device = device;
      CausalLM lm = CausalLM::Load(test::FixtureDir(arch), options);
      const ServerModel& m = *lm.server;
      const int64_t d = m.config().hidden_size;
      at::manual_seed(5);
      const std::vector<int64_t> prompt_lengths = {3, 7, 1, 5};
      const size_t b = prompt_lengths.size();
      auto pool = m.NewPool(static_cast<int64_t>(b), 16);
      std::vector<KvCache> pooled, own;
      for (size_t i = 0; i < b; ++i) {
        pooled.push_back(pool->Acquire());
        own.push_back(m.NewCache());
      }
      for (int step = 0; step < 4; ++step) {
        std::vector<SequenceStep> a, c;
        std::vector<at::Tensor> xs;
        for (size_t i = 0; i < b; ++i)
          xs.push_back(at::randn({step == 0 ? prompt_lengths[i] : 1, d}));
        for (size_t i = 0; i < b; ++i) {
          a.push_back({xs[i], &pooled[i], false});
          c.push_back({xs[i], &own[i], false});
        }
        std::vector<at::Tensor> got = m.Forward(a), want = m.Forward(c);
        for (size_t i = 0; i < b; ++i) {
          const double tol = 1e-5 * std::max(1.0, want[i].abs().max().item<double>());
          EXPECT_LE(MaxAbsDiff(got[i], want[i]), tol)
              << arch << " on " << device << " step " << step << " row " << i;
        }
      }
      // On a GPU the pooled decode steps replayed captured CUDA graphs.
      if (device.is_cuda() && DecodeGraphs::Available() && arch != "mixtral") {
        EXPECT_GT(m.decode_graphs(), 0) << arch;
      }
    }
  }
}

}  // namespace
}  // namespace stip
