#include "common/engine/decode_graphs.h"

#include <algorithm>
#include <list>
#include <map>
#include <mutex>
#include <tuple>

#include "common/engine/causal_lm.h"
#include "common/engine/kv_cache.h"
#include "common/engine/pooled_attention.h"

#if STIP_WITH_CUDA_GRAPHS
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace stip {

#if STIP_WITH_CUDA_GRAPHS

namespace {

struct Graph {
  std::weak_ptr<KvPool> pool;  // the graph writes into its memory: dropped when the pool goes
  at::cuda::CUDAGraph graph;
  at::Tensor x, index;  // inputs, copied in before each replay (index: slots | pasts)
  at::Tensor logits;    // output, overwritten by each replay
};

// Pool id, batch, key span, first slot of consecutive slots (else -1).
using Key = std::tuple<uint64_t, int64_t, int64_t, int64_t>;

}  // namespace

struct DecodeGraphs::Impl {
  explicit Impl(const ServerModel& m) : model(m) {}
  const ServerModel& model;
  mutable std::mutex mu;
  std::map<Key, std::unique_ptr<Graph>> graphs;
  std::list<Key> lru;  // most recently used first
  std::map<Key, bool> failed;
  bool have_mempool = false;
  decltype(at::cuda::graph_pool_handle()) mempool;  // shared: graphs never run at once

  std::unique_ptr<Graph> Capture(KvPool& pool, const at::Tensor& x, const at::Tensor& index,
                                 int64_t span, int64_t first_slot) {
    auto g = std::make_unique<Graph>();
    g->pool = pool.weak_from_this();
    g->x = x.clone();
    g->index = index.to(x.device());
    const int64_t b = x.size(0);
    at::Tensor slots = g->index.narrow(0, 0, b), pasts = g->index.narrow(0, b, b);
    model.PrepareDecodeGraph(span);
    if (!have_mempool) {
      mempool = at::cuda::graph_pool_handle();
      have_mempool = true;
    }
    c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream();
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    at::cuda::CUDAEvent ready, done;
    ready.record(current);
    ready.block(side);
    {
      c10::cuda::CUDAStreamGuard guard(side);
      // Warm-up runs (library handles, lazily loaded kernels) write the same
      // keys and values the step itself writes.
      for (int i = 0; i < 2; ++i) model.DecodeStepCore(g->x, pool, slots, pasts, span, first_slot);
      g->graph.capture_begin(mempool, cudaStreamCaptureModeThreadLocal);
      try {
        g->logits = model.DecodeStepCore(g->x, pool, slots, pasts, span, first_slot);
      } catch (...) {
        try {
          g->graph.capture_end();
        } catch (...) {
        }
        throw;
      }
      g->graph.capture_end();
    }
    done.record(side);
    done.block(current);
    return g;
  }
};

DecodeGraphs::DecodeGraphs(const ServerModel& model) : impl_(std::make_unique<Impl>(model)) {}
DecodeGraphs::~DecodeGraphs() = default;
bool DecodeGraphs::Available() { return true; }

int64_t DecodeGraphs::captured() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return static_cast<int64_t>(impl_->graphs.size());
}

at::Tensor DecodeGraphs::Run(KvPool& pool, const at::Tensor& x, const std::vector<int64_t>& slots,
                             const std::vector<int64_t>& pasts) {
  if (!x.is_cuda() || slots.empty()) return at::Tensor();
  const int64_t b = static_cast<int64_t>(slots.size());
  const int64_t end = *std::max_element(pasts.begin(), pasts.end()) + 1;
  const int64_t span =
      std::min(pool.capacity(), (end + kKeySpanStep - 1) / kKeySpanStep * kKeySpanStep);
  if (end > span) return at::Tensor();
  const int64_t first_slot = PooledBatch::FirstSlotIfConsecutive(slots);
  const Key key{pool.id(), b, span, first_slot};
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (auto g = impl_->graphs.begin(); g != impl_->graphs.end();) {  // graphs of dead pools
    if (g->second->pool.expired()) {
      impl_->lru.remove(g->first);
      g = impl_->graphs.erase(g);
    } else {
      ++g;
    }
  }
  if (impl_->failed.count(key)) return at::Tensor();
  std::vector<int64_t> both(slots);  // one host-to-device copy for both
  both.insert(both.end(), pasts.begin(), pasts.end());
  at::Tensor host_index = at::tensor(at::ArrayRef<int64_t>(both), at::kLong);
  auto it = impl_->graphs.find(key);
  if (it == impl_->graphs.end()) {
    std::unique_ptr<Graph> g;
    try {
      g = impl_->Capture(pool, x, host_index, span, first_slot);
    } catch (const std::exception&) {
      impl_->failed[key] = true;  // this shape runs eagerly from now on
      return at::Tensor();
    }
    if (impl_->graphs.size() >= kMaxGraphs) {
      impl_->graphs.erase(impl_->lru.back());
      impl_->lru.pop_back();
    }
    it = impl_->graphs.emplace(key, std::move(g)).first;
    impl_->lru.push_front(key);
  } else {
    impl_->lru.remove(key);
    impl_->lru.push_front(key);
  }
  Graph& g = *it->second;
  g.x.copy_(x);
  g.index.copy_(host_index);
  g.graph.replay();
  return g.logits.clone();
}

#else  // no CUDA graphs in this build

struct DecodeGraphs::Impl {};
DecodeGraphs::DecodeGraphs(const ServerModel&) {}
DecodeGraphs::~DecodeGraphs() = default;
bool DecodeGraphs::Available() { return false; }
int64_t DecodeGraphs::captured() const { return 0; }
at::Tensor DecodeGraphs::Run(KvPool&, const at::Tensor&, const std::vector<int64_t>&,
                             const std::vector<int64_t>&) {
  return at::Tensor();
}

#endif

}  // namespace stip
