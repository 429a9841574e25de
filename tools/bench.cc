// stip-bench: what STIP costs, measured side by side in one run.
//
//   engine    forward throughput at batch x tokens (the paper's 100 x 100 by
//             default) and decode ms/step at several batch sizes, for the
//             plaintext weights and the STIP-transformed weights on the same
//             engine, interleaved, with the ratio;
//   client    the device's work per token (embed, permute x, un-permute o',
//             sample) at a given hidden size and vocabulary;
//   transform streaming transform throughput of a checkpoint on disk.
//
// Output: a short table on stderr and one JSON object on stdout.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/arch/architecture.h"
#include "common/engine/causal_lm.h"
#include "common/engine/sampler.h"
#include "common/engine/tensor_util.h"
#include "common/error.h"
#include "common/keys/model_keys.h"
#include "common/transform/transform_checkpoint.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"

namespace stip {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

void Sync(const at::Device& d) {
  if (d.is_cuda()) at::zeros({1}, at::TensorOptions().device(d)).cpu();
}

// A model with random weights of a named shape (speed does not depend on values).
ModelConfig PresetConfig(const std::string& preset) {
  nlohmann::json j;
  if (preset == "gpt2-124m") {
    j = {{"model_type", "gpt2"}, {"vocab_size", 50257}, {"n_embd", 768}, {"n_layer", 12},
         {"n_head", 12}, {"n_positions", 1024}};
  } else if (preset == "llama-7b") {
    j = {{"model_type", "llama"}, {"vocab_size", 32000}, {"hidden_size", 4096},
         {"intermediate_size", 11008}, {"num_hidden_layers", 32}, {"num_attention_heads", 32},
         {"num_key_value_heads", 32}, {"max_position_embeddings", 4096}};
  } else if (preset == "small") {
    j = {{"model_type", "llama"}, {"vocab_size", 8000}, {"hidden_size", 512},
         {"intermediate_size", 1376}, {"num_hidden_layers", 6}, {"num_attention_heads", 8},
         {"num_key_value_heads", 4}, {"max_position_embeddings", 2048}};
  } else {
    throw InvalidArgument("unknown preset \"" + preset + "\" (small, gpt2-124m, llama-7b)");
  }
  return ParseModelConfig(j.dump(), "preset " + preset);
}

std::map<std::string, at::Tensor> RandomWeights(const ModelConfig& c) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  std::map<std::string, at::Tensor> m;
  for (const TensorEntry& e : ExpectedTensors(c)) m[e.name] = at::randn(e.shape, gen) * 0.02;
  return m;
}

struct Engines {
  ModelConfig config;
  ModelKeys keys;
  std::unique_ptr<ServerModel> plain, stip;
};

Engines Build(const ModelConfig& config, const TensorSource& source, const LoadOptions& opt) {
  Engines e;
  e.config = config;
  e.keys = GenerateKeys(config, "bench");
  e.plain = std::make_unique<ServerModel>(config, LoadServerWeights(config, source, opt), opt);
  auto transformed = TransformInMemory(config, source, e.keys);
  ModelConfig tc = TransformedConfig(config, e.keys.instance_id);
  MapSource ts(transformed, "transformed");
  e.stip = std::make_unique<ServerModel>(tc, LoadServerWeights(tc, ts, opt), opt);
  return e;
}

// Seconds for one forward of `batch` fresh sequences of `tokens` positions.
double TimeForward(const ServerModel& m, const std::vector<at::Tensor>& xs) {
  std::vector<KvCache> caches;
  for (size_t i = 0; i < xs.size(); ++i) caches.push_back(m.NewCache());
  std::vector<SequenceStep> batch;
  for (size_t i = 0; i < xs.size(); ++i) batch.push_back({xs[i], &caches[i], false});
  auto t0 = Clock::now();
  m.Forward(batch);
  Sync(m.options().device);
  return Seconds(t0, Clock::now());
}

// Milliseconds per decode step at `batch` sequences (after a prefill of `context`).
double TimeDecode(const ServerModel& m, int64_t batch, int64_t context, int steps,
                  const std::vector<at::Tensor>& prefill, const std::vector<at::Tensor>& step_x) {
  std::vector<KvCache> caches;
  for (int64_t i = 0; i < batch; ++i) caches.push_back(m.NewCache());
  std::vector<SequenceStep> pre;
  for (int64_t i = 0; i < batch; ++i) pre.push_back({prefill[static_cast<size_t>(i)], &caches[static_cast<size_t>(i)], false});
  m.Forward(pre);
  (void)context;
  std::vector<double> times;
  for (int s = 0; s < steps; ++s) {
    std::vector<SequenceStep> b;
    for (int64_t i = 0; i < batch; ++i) b.push_back({step_x[static_cast<size_t>(i)], &caches[static_cast<size_t>(i)], false});
    Sync(m.options().device);
    auto t0 = Clock::now();
    m.Forward(b);
    Sync(m.options().device);
    times.push_back(Seconds(t0, Clock::now()) * 1e3);
  }
  return Median(times);
}

}  // namespace
}  // namespace stip

int main(int argc, char** argv) {
  using namespace stip;
  CLI::App app{"stip-bench: STIP vs plaintext on the same engine, side by side"};
  std::string model, preset = "small", device = "auto", dtype = "auto", transform_model;
  int64_t batch = 100, tokens = 100, context = 32, client_d = 4096, client_vocab = 32000;
  std::vector<int64_t> decode_batches = {1, 8, 64};
  int reps = 3, steps = 20;
  app.add_option("--model", model, "Hugging Face model directory (default: random --preset)");
  app.add_option("--preset", preset, "random weights of a shape: small, gpt2-124m, llama-7b");
  app.add_option("--device", device, "auto, cpu or cuda");
  app.add_option("--dtype", dtype, "auto, float32, float16, bfloat16");
  app.add_option("--batch", batch, "forward benchmark: sequences");
  app.add_option("--tokens", tokens, "forward benchmark: positions per sequence");
  app.add_option("--decode-batches", decode_batches, "decode benchmark batch sizes")->delimiter(',');
  app.add_option("--context", context, "decode benchmark: prefilled positions");
  app.add_option("--steps", steps, "decode steps timed");
  app.add_option("--reps", reps, "forward repetitions (median)");
  app.add_option("--client-hidden", client_d, "client benchmark: hidden size");
  app.add_option("--client-vocab", client_vocab, "client benchmark: vocabulary");
  app.add_option("--transform-model", transform_model, "time the streaming transform of this model");
  CLI11_PARSE(app, argc, argv);

  try {
    LoadOptions opt;
    opt.device = ParseDevice(device);
    ModelConfig config = model.empty() ? PresetConfig(preset) : LoadModelConfig(model);
    opt.dtype = ParseComputeDType(dtype, config.dtype, opt.device);
    nlohmann::ordered_json out;
    out["device"] = opt.device.str();
    out["dtype"] = at::toString(opt.dtype);
    out["model"] = model.empty() ? "preset:" + preset : model;
    out["threads"] = at::get_num_threads();

    Engines e;
    if (model.empty()) {
      auto weights = RandomWeights(config);
      MapSource src(weights, preset);
      e = Build(config, src, opt);
    } else {
      Checkpoint ckpt = Checkpoint::Open(model);
      CheckpointSource src(ckpt);
      e = Build(config, src, opt);
    }
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
    auto rand_x = [&](int64_t t) {
      return at::randn({t, config.hidden_size}, gen).to(opt.device, opt.dtype);
    };

    // Engine: forward batch x tokens.
    tokens = std::min(tokens, config.max_positions);
    std::vector<at::Tensor> xs, xps;
    for (int64_t i = 0; i < batch; ++i) {
      xs.push_back(rand_x(tokens));
      xps.push_back(PermuteHidden(xs.back(), e.keys.p));
    }
    TimeForward(*e.plain, {xs[0]});  // warm-up
    TimeForward(*e.stip, {xps[0]});
    std::vector<double> tp, ts;
    for (int r = 0; r < reps; ++r) {  // interleaved
      tp.push_back(TimeForward(*e.plain, xs));
      ts.push_back(TimeForward(*e.stip, xps));
    }
    double fp = Median(tp), fs = Median(ts);
    const double ntok = static_cast<double>(batch * tokens);
    out["forward"] = {{"batch", batch},
                      {"tokens", tokens},
                      {"plain_tokens_per_s", ntok / fp},
                      {"stip_tokens_per_s", ntok / fs},
                      {"stip_over_plain_time", fs / fp}};
    std::fprintf(stderr, "%-28s %14s %14s %8s\n", "engine", "plain", "stip", "ratio");
    std::fprintf(stderr, "%-28s %12.0f/s %12.0f/s %8.3f\n",
                 ("forward " + std::to_string(batch) + "x" + std::to_string(tokens)).c_str(),
                 ntok / fp, ntok / fs, fs / fp);

    // Engine: decode ms/step.
    nlohmann::ordered_json dec = nlohmann::ordered_json::array();
    for (int64_t b : decode_batches) {
      std::vector<at::Tensor> pre, prep, step, stepp;
      for (int64_t i = 0; i < b; ++i) {
        pre.push_back(rand_x(context));
        prep.push_back(PermuteHidden(pre.back(), e.keys.p));
        step.push_back(rand_x(1));
        stepp.push_back(PermuteHidden(step.back(), e.keys.p));
      }
      double dp = 0, ds = 0;
      std::vector<double> vp, vs;
      for (int r = 0; r < 2; ++r) {
        vp.push_back(TimeDecode(*e.plain, b, context, steps, pre, step));
        vs.push_back(TimeDecode(*e.stip, b, context, steps, prep, stepp));
      }
      dp = *std::min_element(vp.begin(), vp.end());
      ds = *std::min_element(vs.begin(), vs.end());
      dec.push_back({{"batch", b},
                     {"plain_ms_per_step", dp},
                     {"stip_ms_per_step", ds},
                     {"plain_tokens_per_s", b * 1e3 / dp},
                     {"stip_tokens_per_s", b * 1e3 / ds},
                     {"stip_over_plain_time", ds / dp}});
      std::fprintf(stderr, "%-28s %11.3f ms %11.3f ms %8.3f\n",
                   ("decode batch " + std::to_string(b)).c_str(), dp, ds, ds / dp);
    }
    out["decode"] = dec;

    // Client: work per token at d x V (embed, permute, un-permute, sample).
    {
      at::Tensor table = at::randn({client_vocab, client_d}, gen);
      ClientWeights cw{table, at::Tensor()};
      ModelConfig cc = config;
      cc.vocab_size = client_vocab;
      cc.hidden_size = client_d;
      cc.positions = PositionKind::kRope;
      ClientModel client(cc, cw);
      ClientPermuter perm(RandomPermutation(client_d), RandomPermutation(client_vocab));
      at::Tensor logits = at::randn({client_vocab}, gen);
      Sampler greedy(SamplingOptions{true, 1, 0, 1, 1, 0});
      SamplingOptions so;
      so.temperature = 0.8;
      so.top_p = 0.9;
      so.seed = 1;
      Sampler nucleus(so);
      const int n = 200;
      std::vector<double> t_embed, t_perm, t_unperm, t_greedy, t_topp;
      int64_t id = 17;
      for (int i = 0; i < n; ++i) {
        auto t0 = Clock::now();
        at::Tensor x = client.Embed(std::vector<int64_t>{id}, i);
        auto t1 = Clock::now();
        at::Tensor xp = perm.Permute(x);
        auto t2 = Clock::now();
        at::Tensor o = perm.Unpermute(logits);
        auto t3 = Clock::now();
        id = greedy.Next(o, {});
        auto t4 = Clock::now();
        nucleus.Next(o, {});
        auto t5 = Clock::now();
        (void)xp;
        t_embed.push_back(Seconds(t0, t1) * 1e3);
        t_perm.push_back(Seconds(t1, t2) * 1e3);
        t_unperm.push_back(Seconds(t2, t3) * 1e3);
        t_greedy.push_back(Seconds(t3, t4) * 1e3);
        t_topp.push_back(Seconds(t4, t5) * 1e3);
      }
      double stip_only = Median(t_perm) + Median(t_unperm);
      out["client"] = {{"hidden", client_d},
                       {"vocab", client_vocab},
                       {"embed_ms", Median(t_embed)},
                       {"permute_ms", Median(t_perm)},
                       {"unpermute_ms", Median(t_unperm)},
                       {"sample_greedy_ms", Median(t_greedy)},
                       {"sample_top_p_ms", Median(t_topp)},
                       {"stip_overhead_ms_per_token", stip_only}};
      std::fprintf(stderr,
                   "client d=%lld V=%lld: embed %.4f ms, permute %.4f ms, un-permute %.4f ms "
                   "(STIP adds %.4f ms/token), greedy %.4f ms, top-p %.4f ms\n",
                   static_cast<long long>(client_d), static_cast<long long>(client_vocab),
                   Median(t_embed), Median(t_perm), Median(t_unperm), stip_only,
                   Median(t_greedy), Median(t_topp));
    }

    if (!transform_model.empty()) {
      std::string tmp = MakeTempDirectoryBeside("/tmp/stip-bench-transform", 0700);
      ModelKeys keys = GenerateKeys(LoadModelConfig(transform_model), FingerprintModel(transform_model));
      TransformOptions topt;
      topt.progress = false;
      TransformStats s = TransformCheckpoint(transform_model, tmp + "/out", keys, topt);
      RemoveAll(tmp);
      out["transform"] = {{"bytes", s.bytes_read},
                          {"seconds", s.seconds},
                          {"gb_per_s", s.bytes_read / 1e9 / s.seconds}};
      std::fprintf(stderr, "transform: %.1f MB in %.2f s = %.3f GB/s\n", s.bytes_read / 1e6,
                   s.seconds, s.bytes_read / 1e9 / s.seconds);
    }
    std::cout << out.dump() << std::endl;
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "stip-bench: error: %s\n", e.what());
    return 2;
  }
}
