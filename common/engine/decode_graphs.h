// CUDA graphs of decode steps.
//
// A decode step of a small model is a few hundred small kernels, and on a GPU
// the host's time to launch them (~10 us each through ATen) exceeds their run
// time several times over. A CUDA graph records the step's kernels once and
// replays them with one launch. Graphs need fixed shapes and addresses, so a
// graph is captured per (KV pool, batch size, key span): the inputs, slot
// and position indices are copied into the graph's own buffers before each
// replay, keys are padded to the span (a multiple of kKeySpanStep, masked
// beyond each sequence's end, exactly as the eager pooled path), and
// everything that decides shapes stays on the host. Graphs are captured on
// first use and kept (at most kMaxGraphs; the least recently used goes).
//
// Built where LibTorch has CUDA (2.1+); elsewhere Available() is false and the
// engine runs eagerly. STIP_CUDA_GRAPHS=0 or LoadOptions::cuda_graphs = false
// turns them off.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace stip {

class KvPool;
class ServerModel;

class DecodeGraphs {
 public:
  static constexpr int64_t kKeySpanStep = 128;
  static constexpr size_t kMaxGraphs = 64;

  explicit DecodeGraphs(const ServerModel& model);
  ~DecodeGraphs();
  // Whether this build can capture CUDA graphs at all.
  static bool Available();

  // fp32 logits [B, vocab] of one decode step of B sequences in `pool`:
  // x [B, d] on the device in the compute dtype, the sequences' slots and
  // committed lengths. Writes their new keys and values; commits nothing.
  // Returns an undefined tensor where a graph cannot be used (then nothing
  // was written and the caller runs the step eagerly).
  at::Tensor Run(KvPool& pool, const at::Tensor& x, const std::vector<int64_t>& slots,
                 const std::vector<int64_t>& pasts);

  // Graphs captured so far (for tests and benchmarks).
  int64_t captured() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stip
