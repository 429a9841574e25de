// stip-profile: where the time of a decode step goes. Runs decode steps of a
// random model of a named shape (as stip-bench) at one batch size and writes
// a Chrome trace (chrome://tracing, Perfetto) of a few of them with LibTorch's
// Kineto profiler: every ATen call on the host and every kernel on the GPU.
// tools/trace_summary.py turns the trace into a table.
//
//   stip-profile --preset gpt2-124m --device cuda --dtype float16 --batch 1
//                --trace decode.json
//
// Needs LibTorch 2.x with Kineto (the PyTorch builds); elsewhere it says so.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/version.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/autograd/profiler_kineto.h>
#endif

#include "common/engine/causal_lm.h"
#include "common/engine/tensor_util.h"
#include "common/error.h"
#include "tools/random_model.h"

namespace stip {
namespace {

void Sync(const at::Device& d) {
  if (!d.is_cpu()) at::zeros({1}, at::TensorOptions().device(d)).cpu();
}

int Main(int argc, char** argv) {
  CLI::App app{"stip-profile: a Kineto trace of decode steps"};
  std::string preset = "gpt2-124m", device = "cuda", dtype = "float16", trace = "decode.json";
  std::string kv_cache = "pool", cuda_graphs = "on";
  app.add_option("--cuda-graphs", cuda_graphs, "on or off")->check(CLI::IsMember({"on", "off"}));
  int64_t batch = 1, context = 128;
  int warmup = 8, steps = 4;
  app.add_option("--preset", preset, "model shape (tiny, small, gpt2-124m, llama-7b)");
  app.add_option("--device", device, "cpu or cuda");
  app.add_option("--dtype", dtype, "float32, float16, bfloat16");
  app.add_option("--batch", batch, "sequences per step");
  app.add_option("--context", context, "prefilled positions");
  app.add_option("--warmup", warmup, "steps before the profiled ones");
  app.add_option("--steps", steps, "profiled steps");
  app.add_option("--kv-cache", kv_cache, "pool or per-sequence")
      ->check(CLI::IsMember({"pool", "per-sequence"}));
  app.add_option("--trace", trace, "Chrome trace to write");
  CLI11_PARSE(app, argc, argv);
  try {
    c10::InferenceMode inference_mode;
    LoadOptions opt;
    ModelConfig config = PresetConfig(preset);
    opt.device = ParseDevice(device);
    opt.dtype = ParseComputeDType(dtype, config.dtype, opt.device);
    opt.cuda_graphs = cuda_graphs == "on";
    RandomSource src(config);
    ServerModel m(config, LoadServerWeights(config, src, opt), opt);
    std::vector<KvCache> caches;
    std::shared_ptr<KvPool> pool =
        kv_cache == "pool" ? m.NewPool(batch, context + warmup + steps) : nullptr;
    for (int64_t i = 0; i < batch; ++i) caches.push_back(pool ? pool->Acquire() : m.NewCache());
    auto opts = at::TensorOptions().dtype(opt.dtype).device(opt.device);
    std::vector<SequenceStep> pre, step;
    std::vector<at::Tensor> xs;
    for (int64_t i = 0; i < batch; ++i) {
      pre.push_back({at::randn({context, config.hidden_size}, opts), &caches[i], false});
      xs.push_back(at::randn({1, config.hidden_size}, opts));
      step.push_back({xs.back(), &caches[i], false});
    }
    m.Forward(pre);
    using Clock = std::chrono::steady_clock;
    auto ms = [](Clock::time_point a, Clock::time_point b) {
      return std::chrono::duration<double, std::milli>(b - a).count();
    };
    auto run_steps = [&](int n, const char* label) {
      for (int s = 0; s < n; ++s) {
        auto t0 = Clock::now();
        m.Forward(step);
        auto t1 = Clock::now();
        Sync(opt.device);
        std::fprintf(stderr, "%s step %d: host %.3f ms, total %.3f ms\n", label, s, ms(t0, t1),
                     ms(t0, Clock::now()));
      }
    };
    run_steps(warmup, "warm-up");
#if TORCH_VERSION_MAJOR >= 2
    namespace prof = torch::autograd::profiler;
    using torch::profiler::impl::ActivityType;
    using torch::profiler::impl::ProfilerConfig;
    using torch::profiler::impl::ProfilerState;
    ProfilerConfig cfg(ProfilerState::KINETO);
    std::set<ActivityType> acts{ActivityType::CPU};
    if (opt.device.is_cuda()) acts.insert(ActivityType::CUDA);
    prof::prepareProfiler(cfg, acts);
    prof::enableProfiler(cfg, acts);
    run_steps(steps, "profiled");
    Sync(opt.device);
    std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
    result->save(trace);
    std::fprintf(stderr, "trace of %d steps: %s\n", steps, trace.c_str());
    return 0;
#else
    run_steps(steps, "timed");
    std::fprintf(stderr, "stip-profile: LibTorch %s has no Kineto profiler API; no trace\n",
                 TORCH_VERSION);
    return 2;
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stip-profile: %s\n", e.what());
    return 1;
  }
}

}  // namespace
}  // namespace stip

int main(int argc, char** argv) { return stip::Main(argc, argv); }
