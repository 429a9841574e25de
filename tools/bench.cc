// stip-bench: what STIP costs, measured side by side in one run.
//
//   engine    forward throughput at batch x tokens (the paper's 100 x 100 by
//             default) and decode ms/step at several batch sizes, for the
//             plaintext weights and the STIP-transformed weights on the same
//             engine, interleaved step by step, medians after a warm-up, with
//             the ratio;
//   client    the device's work per token (embed, permute x, un-permute o',
//             sample) at a given hidden size and vocabulary;
//   models    per model (default: the demo models): streaming transform
//             throughput, the client bundle's size on disk and the memory that
//             loading it takes (embedding half, keys, tokenizer; measured in
//             a fresh child process);
//   e2e       (gRPC builds) per model: an in-process stip server on loopback
//             (plaintext gRPC, no TLS) driven by the client's RemoteSession:
//             per-token latency split into client work, transport and
//             serialization, and server compute; bytes on the wire per token;
//             tokens/s at 1 and 16 concurrent sessions;
//   transform streaming transform throughput of one more checkpoint on disk.
//
// Output: a short table on stderr and one JSON object on stdout.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <torch/version.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "common/arch/architecture.h"
#include "common/client/client_permuter.h"
#include "common/engine/causal_lm.h"
#include "common/engine/cpu_runtime.h"
#include "common/engine/encoder.h"
#include "common/engine/sampler.h"
#include "common/engine/tensor_util.h"
#include "common/error.h"
#include "common/keys/model_keys.h"
#include "common/tokenizer/tokenizer.h"
#include "common/transform/transform_checkpoint.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"
#include "tools/random_model.h"

#ifdef STIP_WITH_GRPC
#include "common/metrics/httplib.h"
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "client/bundle_store.h"
#include "client/chat_service.h"
#include "client/encoder_tasks.h"
#include "client/http_api.h"
#include "client/remote_session.h"
#include "common/rpc/logits_transport.h"
#include "common/rpc/server_setup.h"
#include "common/rpc/tensor_wire.h"
#include "common/rpc/tls.h"
#include "server/access_policy.h"
#include "server/batch_scheduler.h"
#include "server/stip_server.h"
#include "stip/v1/stip.pb.h"
#endif

#ifndef STIP_MODELS_DIR
#define STIP_MODELS_DIR "models"
#endif

namespace stip {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
double Ms(Clock::time_point a, Clock::time_point b) { return Seconds(a, b) * 1e3; }

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void Sync(const at::Device& d) {
  if (!d.is_cpu()) at::zeros({1}, at::TensorOptions().device(d)).cpu();
}

// The plaintext and the STIP-transformed server halves on the same engine.
struct Engines {
  ModelConfig config;
  ModelKeys keys;
  std::unique_ptr<ServerModel> plain, stip;
};

// The transformed model is the plaintext one with its tensors permuted: made
// tensor by tensor on the device (PermuteTensor is a gather), so that only
// the two models are ever in memory.
class PermutedSource : public TensorSource {
 public:
  PermutedSource(const ModelConfig& plain, const TensorSource& source, const ModelKeys& keys)
      : plain_(plain), source_(source), keys_(keys) {
    for (const TransformedTensor& t : PlanServerTensors(plain)) plan_[t.name] = t;
  }
  bool Has(const std::string& name) const override { return plan_.count(name) != 0; }
  std::vector<int64_t> Shape(const std::string& name) const override {
    return plan_.at(name).shape;
  }
  at::Tensor Load(const std::string& name, at::ScalarType type, at::Device device) const override {
    const TransformedTensor& t = plan_.at(name);
    at::Tensor w = source_.Load(SourceTensorName(t, plain_, keys_), type, device);
    return PermuteTensor(w, t.layout, PermutationsFor(t, plain_, keys_)).contiguous();
  }
  std::string Describe() const override { return "transformed " + source_.Describe(); }

 private:
  const ModelConfig& plain_;
  const TensorSource& source_;
  const ModelKeys& keys_;
  std::map<std::string, TransformedTensor> plan_;
};

Engines Build(const ModelConfig& config, const TensorSource& source, const LoadOptions& opt) {
  Engines e;
  e.config = config;
  e.keys = GenerateKeys(config, "bench");
  e.plain = std::make_unique<ServerModel>(config, LoadServerWeights(config, source, opt), opt);
  ModelConfig tc = TransformedConfig(config, e.keys.instance_id);
  PermutedSource ts(config, source, e.keys);
  e.stip = std::make_unique<ServerModel>(tc, LoadServerWeights(tc, ts, opt), opt);
  return e;
}

// How the benchmarks hold KV caches: one pool per engine and run (what the
// server does; batched attention), or a growing cache per sequence.
bool g_kv_pool = true;

std::vector<KvCache> NewCaches(const ServerModel& m, size_t n, int64_t positions) {
  std::vector<KvCache> caches;
  caches.reserve(n);
  std::shared_ptr<KvPool> pool =
      g_kv_pool ? m.NewPool(static_cast<int64_t>(n), positions) : nullptr;
  for (size_t i = 0; i < n; ++i) caches.push_back(pool ? pool->Acquire() : m.NewCache());
  return caches;
}

// Seconds for one forward of fresh sequences (one per input).
double TimeForward(const ServerModel& m, const std::vector<at::Tensor>& xs) {
  std::vector<KvCache> caches = NewCaches(m, xs.size(), xs[0].size(0));
  std::vector<SequenceStep> batch;
  for (size_t i = 0; i < xs.size(); ++i) batch.push_back({xs[i], &caches[i], false});
  Sync(m.options().device);
  auto t0 = Clock::now();
  m.Forward(batch);
  Sync(m.options().device);
  return Seconds(t0, Clock::now());
}

struct StepTime {
  double ms = 0;       // until the step's results are ready
  double host_ms = 0;  // until Forward returned (kernels queued, on a GPU)
};

// One decode step of every sequence.
StepTime DecodeStep(const ServerModel& m, std::vector<KvCache>& caches,
                    const std::vector<at::Tensor>& xs) {
  std::vector<SequenceStep> b;
  b.reserve(caches.size());
  for (size_t i = 0; i < caches.size(); ++i) b.push_back({xs[i], &caches[i], false});
  auto t0 = Clock::now();
  m.Forward(b);
  auto t1 = Clock::now();
  Sync(m.options().device);
  return {Ms(t0, Clock::now()), Ms(t0, t1)};
}

struct PairTimes {
  std::vector<double> plain, stip, plain_host, stip_host;
};

// Decode at `batch` sequences, plaintext and STIP alternating step by step
// (the order flips every step), each rep from fresh caches prefilled with
// `context` positions and `warmup` untimed steps.
PairTimes TimeDecodePair(const Engines& e, const std::vector<at::Tensor>& pre,
                         const std::vector<at::Tensor>& pre_p, const std::vector<at::Tensor>& step,
                         const std::vector<at::Tensor>& step_p, int reps, int warmup, int steps) {
  PairTimes out;
  const size_t b = pre.size();
  const int64_t positions = pre[0].size(0) + warmup + steps;
  for (int r = 0; r < reps; ++r) {
    std::vector<KvCache> cp = NewCaches(*e.plain, b, positions);
    std::vector<KvCache> cs = NewCaches(*e.stip, b, positions);
    std::vector<SequenceStep> fp, fs;
    for (size_t i = 0; i < b; ++i) {
      fp.push_back({pre[i], &cp[i], false});
      fs.push_back({pre_p[i], &cs[i], false});
    }
    e.plain->Forward(fp);
    e.stip->Forward(fs);
    Sync(e.plain->options().device);
    for (int s = 0; s < warmup + steps; ++s) {
      const bool plain_first = (s + r) % 2 == 0;
      StepTime tp, ts;
      if (plain_first) {
        tp = DecodeStep(*e.plain, cp, step);
        ts = DecodeStep(*e.stip, cs, step_p);
      } else {
        ts = DecodeStep(*e.stip, cs, step_p);
        tp = DecodeStep(*e.plain, cp, step);
      }
      if (s >= warmup) {
        out.plain.push_back(tp.ms);
        out.stip.push_back(ts.ms);
        out.plain_host.push_back(tp.host_ms);
        out.stip_host.push_back(ts.host_ms);
      }
    }
  }
  return out;
}

// ---- memory -------------------------------------------------------------------

int64_t StatusField(const std::string& field) {  // kB fields of /proc/self/status, in bytes
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::atoll(line.c_str() + field.size() + 1) * 1024;
  }
  return -1;
}

uint64_t DirectoryBytes(const std::string& dir) {
  uint64_t total = 0;
  for (const std::string& n : ListDirectory(dir)) {
    struct stat st;
    const std::string p = JoinPath(dir, n);
    if (stat(p.c_str(), &st) != 0) continue;
    total += S_ISDIR(st.st_mode) ? DirectoryBytes(p) : static_cast<uint64_t>(st.st_size);
  }
  return total;
}

// The child process of the footprint measurement: loads what a client holds
// (embedding half of the model, keys, tokenizer) and prints its RSS growth.
int ClientRssProbe(const std::string& dir) {
  at::zeros({1}).add_(1);  // LibTorch's own start-up is not the bundle's
  const int64_t before = StatusField("VmRSS");
  auto model = ClientModel::Load(dir);
  ClientKeys keys = LoadClientKeys(JoinPath(dir, "client_keys.safetensors"));
  auto tok = Tokenizer::FromDirectory(dir);
  tok->Encode("warm up");  // SentencePiece loads its module on first use
  const int64_t after = StatusField("VmRSS");
  Json j = {{"rss_before_bytes", before},
            {"rss_after_bytes", after},
            {"rss_delta_bytes", after - before},
            {"vm_hwm_bytes", StatusField("VmHWM")}};
  std::cout << j.dump() << std::endl;
  return keys.p.empty() ? 1 : 0;
}

std::string SelfExe() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) throw Internal("cannot read /proc/self/exe");
  return std::string(buf, static_cast<size_t>(n));
}

std::string ShellQuote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

Json RunClientRssProbe(const std::string& bundle_dir) {
  const std::string cmd = ShellQuote(SelfExe()) + " --client-rss-probe " + ShellQuote(bundle_dir);
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw Internal("cannot start the footprint probe");
  std::string out;
  char buf[512];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int rc = pclose(p);
  if (rc != 0) throw Internal("the footprint probe failed (exit " + std::to_string(rc) + ")");
  return Json::parse(out);
}

// ---- models: transform, bundle, footprint ----------------------------------------

struct PreparedModel {
  std::string name, dir, tmp, bundle_dir, server_dir;
  ModelConfig config;
  ModelKeys keys;
  Json json;
};

std::string BaseName(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t s = p.rfind('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

PreparedModel PrepareModel(const std::string& dir) {
  PreparedModel m;
  m.dir = dir;
  m.name = BaseName(dir);
  m.config = LoadModelConfig(dir);
  char tmpl[] = "/tmp/stip-bench-XXXXXX";
  if (!mkdtemp(tmpl)) throw Internal("mkdtemp failed");
  m.tmp = tmpl;
  m.keys = GenerateKeys(m.config, FingerprintModel(dir));
  TransformOptions topt;
  topt.progress = false;
  TransformStats s = TransformCheckpoint(dir, JoinPath(m.tmp, "out"), m.keys, topt);
  m.bundle_dir = JoinPath(m.tmp, "out/client");
  m.server_dir = JoinPath(m.tmp, "out/server");
  const ModelConfig& c = m.config;
  // What the client holds: embedding tables in fp32 (the client computes in
  // fp32), p [d] and p_c [V] as int64.
  int64_t tensor_bytes = (c.vocab_size * c.hidden_size) * 4 + (c.hidden_size + c.vocab_size) * 8;
  if (c.positions == PositionKind::kLearned) tensor_bytes += c.max_positions * c.hidden_size * 4;
  Json probe = RunClientRssProbe(m.bundle_dir);
  m.json = {{"model", m.name},
            {"arch", c.model_type},
            {"hidden", c.hidden_size},
            {"vocab", c.vocab_size},
            {"layers", c.num_layers},
            {"transform",
             {{"bytes", s.bytes_read},
              {"seconds", s.seconds},
              {"gb_per_s", s.seconds > 0 ? s.bytes_read / 1e9 / s.seconds : 0}}},
            {"client_bundle_bytes_on_disk", DirectoryBytes(m.bundle_dir)},
            {"server_checkpoint_bytes_on_disk", DirectoryBytes(m.server_dir)},
            {"client_tensor_bytes", tensor_bytes},
            {"client_rss_delta_bytes", probe["rss_delta_bytes"]}};
  return m;
}

// What the e2e section runs (options accepted, and ignored, without gRPC).
struct E2eOptions {
  std::string device = "auto", dtype = "auto";
  std::vector<int> sessions = {1, 16};
  int latency_tokens = 64;
  int new_tokens = 32;
  int max_batch = 16;
  int batch_wait_us = 0;
  std::string prompt = "And God said,";
  std::vector<std::string> logits_formats = {"fp32", "fp16", "top-k:64"};
};

#ifdef STIP_WITH_GRPC
// ---- end to end over gRPC ------------------------------------------------------

// The bench's server admits any session: it measures speed, not access control.
class OpenDoorPolicy final : public AccessPolicy {
 public:
  AccessGrant Authorize(const std::string&, const std::string&) const override { return {}; }
};

at::Tensor IndexOf(const std::vector<int64_t>& v) {
  return at::tensor(at::ArrayRef<int64_t>(v), at::kLong);
}

Json RunE2e(PreparedModel& m, const E2eOptions& o) {
  c10::InferenceMode inference_mode;
  const std::string store = JoinPath(m.tmp, "store");
  MakeDirectories(JoinPath(store, "models"), 0700);
  RenamePath(m.server_dir, JoinPath(store, "models/" + m.keys.instance_id));

  ServerOptions so;
  so.listen = "127.0.0.1:0";
  so.tls.insecure = true;
  so.store.dir = store;
  so.store.device = o.device;
  so.store.dtype = o.dtype;
  so.store.max_batch = o.max_batch;
  so.store.batch_wait_us = o.batch_wait_us;
  so.inference.max_sessions = 0;
  so.inference.idle_timeout_s = 0;
  so.inference.policy = std::make_shared<OpenDoorPolicy>();
  StipServer srv(so);
  const SchedulerCounters& counters = srv.counters();

  auto bundle = ClientBundle::Load(m.bundle_dir, m.keys.instance_id);
  const ClientModel& client = bundle->model();
  const Tokenizer& tok = bundle->tokenizer();
  const at::Tensor p_index = IndexOf(bundle->keys().p);
  const at::Tensor p_c_inverse = IndexOf(InversePermutation(bundle->keys().p_c));
  TlsOptions tls;
  tls.insecure = true;
  const std::string address = "127.0.0.1:" + std::to_string(srv.port());
  auto session_options = [&] {
    RemoteSessionOptions r;
    r.address = address;
    r.instance_id = m.keys.instance_id;
    r.access_token = "bench";
    r.expected_hidden = bundle->hidden_size();
    r.expected_vocab = bundle->vocab_size();
    return r;
  };

  Json out = {{"model", m.name},
              {"transport", "gRPC on loopback, plaintext (no TLS), server in the same process"}};

  // Tokenize (the prompt) and the per-token path of one session.
  std::vector<double> t_tok;
  std::vector<int64_t> prompt;
  for (int i = 0; i < 50; ++i) {
    auto t0 = Clock::now();
    prompt = tok.Encode(o.prompt);
    t_tok.push_back(Ms(t0, Clock::now()));
  }
  // One session per logits format, the same greedy tokens each time.
  auto latency = [&](const LogitsFormat& format) {
    RemoteSessionOptions so = session_options();
    so.logits_format = format;
    RemoteSession session(MakeChannel(address, tls, "stip-bench"), so);
    SessionInfo info = session.Open();
    Sampler greedy(SamplingOptions{true, 1, 0, 1, 1, 0});
    StreamDecoder decoder(tok);
    std::vector<int64_t> history = prompt;
    at::Tensor o_prime = session.Step(client.Embed(prompt, 0).index_select(-1, p_index), false);
    int64_t next = greedy.Next(o_prime[0].index_select(-1, p_c_inverse), history);
    const int64_t max_tokens = std::max<int64_t>(
        4, std::min<int64_t>(o.latency_tokens, info.max_context > 0
                                                   ? info.max_context - 1 - int64_t(prompt.size())
                                                   : o.latency_tokens));
    std::vector<double> t_embed, t_perm, t_rtt, t_server, t_unperm, t_sample, t_detok, t_total;
    at::Tensor last_x_prime;
    for (int64_t i = 0; i < max_tokens; ++i) {
      history.push_back(next);
      const int64_t pos = static_cast<int64_t>(history.size()) - 1;
      auto t0 = Clock::now();
      at::Tensor x = client.Embed(std::vector<int64_t>{next}, pos);
      auto t1 = Clock::now();
      at::Tensor xp = x.index_select(-1, p_index);
      auto t2 = Clock::now();
      const uint64_t ns0 = counters.forward_ns.load();
      at::Tensor op = session.Step(xp, false);
      const uint64_t ns1 = counters.forward_ns.load();
      auto t3 = Clock::now();
      at::Tensor logits = op[0].index_select(-1, p_c_inverse);
      auto t4 = Clock::now();
      next = greedy.Next(logits, history);
      auto t5 = Clock::now();
      decoder.Push(next);
      auto t6 = Clock::now();
      if (i < 3) continue;  // warm-up
      t_embed.push_back(Ms(t0, t1));
      t_perm.push_back(Ms(t1, t2));
      t_rtt.push_back(Ms(t2, t3));
      t_server.push_back(static_cast<double>(ns1 - ns0) / 1e6);
      t_unperm.push_back(Ms(t3, t4));
      t_sample.push_back(Ms(t4, t5));
      t_detok.push_back(Ms(t5, t6));
      t_total.push_back(Ms(t0, t6));
      last_x_prime = xp;
      o_prime = op;
    }
    session.Close();
    const double rtt = Median(t_rtt), server_ms = Median(t_server);
    const double client_ms =
        Median(t_embed) + Median(t_perm) + Median(t_unperm) + Median(t_sample) + Median(t_detok);
    Json r = {
        {"logits_format", format.ToString()},
        {"prompt_tokens", prompt.size()},
        {"tokenize_prompt_ms", Median(t_tok)},
        {"tokens_timed", t_total.size()},
        {"generated_ids", std::vector<int64_t>(history.begin() + prompt.size(), history.end())},
        {"per_token_ms",
         {{"embed", Median(t_embed)},
          {"permute", Median(t_perm)},
          {"unpermute", Median(t_unperm)},
          {"sample_greedy", Median(t_sample)},
          {"detokenize", Median(t_detok)},
          {"client_work", client_ms},
          {"round_trip", rtt},
          {"server_compute", server_ms},
          {"transport_and_serialization", rtt - server_ms},
          {"total", Median(t_total)}}}};
    // Bytes per decode token: the payloads and the protobuf messages around
    // them (the last step's, re-encoded as the server did).
    v1::SessionRequest req;
    v1::Step* st = req.mutable_step();
    st->set_step_id(1000);
    st->set_truncate_to(-1);
    ToWire(last_x_prime.to(at::kFloat), st->mutable_hidden());
    v1::SessionResponse resp;
    v1::StepResult* res = resp.mutable_result();
    res->set_step_id(1000);
    res->set_context_length(static_cast<int64_t>(history.size()));
    EncodedLogits enc = EncodeLogits(o_prime, format);
    ToWire(enc, res);
    const int64_t o_payload =
        enc.values.nbytes() + (enc.indices.defined() ? enc.indices.nbytes() : int64_t{0});
    r["bytes_per_token"] = {
        {"x_prime_payload", last_x_prime.numel() * 4},
        {"o_prime_payload", o_payload},
        {"request_message", req.ByteSizeLong()},
        {"response_message", resp.ByteSizeLong()},
        {"note", "x' in fp32; gRPC/HTTP2 framing adds a few dozen bytes per message"}};
    return r;
  };
  Json formats = Json::array();
  for (const std::string& f : o.logits_formats) formats.push_back(latency(LogitsFormat::Parse(f)));
  for (Json& f : formats) {
    f["same_tokens_as_first_format"] = f["generated_ids"] == formats[0]["generated_ids"];
  }
  // The first format (fp32 by default) is the headline; all of them side by side.
  out["latency"] = formats[0];
  out["bytes_per_token"] = formats[0]["bytes_per_token"];
  out["logits_formats"] = formats;

  // Tokens/s with N concurrent sessions (a thread and a RemoteSession each).
  Json tput = Json::array();
  for (int n : o.sessions) {
    std::mutex mu;
    std::condition_variable cv;
    int ready = 0;
    bool go = false;
    std::vector<std::vector<double>> step_ms(static_cast<size_t>(n));
    std::vector<std::string> errors;
    std::vector<Clock::time_point> finished(static_cast<size_t>(n));
    uint64_t f0 = 0, s0 = 0, ns0 = 0;  // counters when the timed part starts
    std::vector<std::thread> threads;
    for (int k = 0; k < n; ++k) {
      threads.emplace_back([&, k] {
        c10::InferenceMode im;
        auto mark_ready = [&] {
          std::unique_lock<std::mutex> lock(mu);
          ++ready;
          cv.notify_all();
          cv.wait(lock, [&] { return go; });
        };
        try {
          RemoteSession s(MakeChannel(address, tls, "stip-bench"), session_options());
          s.Open();
          std::vector<int64_t> h = prompt;
          at::Tensor o1 = s.Step(client.Embed(h, 0).index_select(-1, p_index), false);
          int64_t id = o1[0].index_select(-1, p_c_inverse).argmax().item<int64_t>();
          mark_ready();
          for (int i = 0; i < o.new_tokens; ++i) {
            h.push_back(id);
            auto t0 = Clock::now();
            at::Tensor xp = client.Embed(std::vector<int64_t>{id}, int64_t(h.size()) - 1)
                                .index_select(-1, p_index);
            at::Tensor op = s.Step(xp, false);
            id = op[0].index_select(-1, p_c_inverse).argmax().item<int64_t>();
            step_ms[static_cast<size_t>(k)].push_back(Ms(t0, Clock::now()));
          }
          finished[static_cast<size_t>(k)] = Clock::now();
          s.Close();
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> lock(mu);
          errors.push_back(e.what());
          if (!go) {
            ++ready;
            cv.notify_all();
          }
        }
      });
    }
    Clock::time_point start;
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return ready == n; });
      go = true;
      f0 = counters.forwards.load();
      s0 = counters.steps.load();
      ns0 = counters.forward_ns.load();
      start = Clock::now();
    }
    cv.notify_all();
    for (auto& t : threads) t.join();
    if (!errors.empty()) throw Internal("e2e session failed: " + errors.front());
    Clock::time_point end = start;
    std::vector<double> all;
    for (int k = 0; k < n; ++k) {
      end = std::max(end, finished[static_cast<size_t>(k)]);
      all.insert(all.end(), step_ms[static_cast<size_t>(k)].begin(),
                 step_ms[static_cast<size_t>(k)].end());
    }
    const double wall = Seconds(start, end);
    const uint64_t forwards = counters.forwards.load() - f0, steps = counters.steps.load() - s0;
    tput.push_back({{"sessions", n},
                    {"new_tokens_per_session", o.new_tokens},
                    {"tokens_per_s", n * o.new_tokens / wall},
                    {"step_ms_median", Median(all)},
                    {"server_forwards", forwards},
                    {"mean_sequences_per_forward",
                     forwards ? static_cast<double>(steps) / static_cast<double>(forwards) : 0},
                    {"server_compute_share",
                     static_cast<double>(counters.forward_ns.load() - ns0) / 1e9 / wall}});
  }
  out["throughput"] = tput;

  // The client daemon's two local APIs on the same sessions: the gRPC Chat
  // service and the OpenAI-compatible HTTP API (streamed), one request at a
  // time, alternating: time to first token and decode tokens/s.
  {
    auto make_backend = [&]() -> std::unique_ptr<LogitsBackend> {
      return std::make_unique<RemoteSession>(MakeChannel(address, tls, "stip-bench"),
                                             session_options());
    };
    ChatServiceOptions co;
    co.bundle = bundle;
    co.make_backend = make_backend;
    ChatService chat(co);
    ServerSetup setup;
    setup.address = "127.0.0.1:0";
    setup.tls.insecure = true;
    setup.name = "stip-bench chat";
    int chat_port = 0;
    auto chat_server = StartServer(setup, {&chat}, &chat_port);
    HttpApiOptions ho;
    ho.bundle = bundle;
    ho.make_backend = make_backend;
    ho.model_id = "bench";
    ho.serve_page = false;
    HttpApi http(ho);
    const int http_port = http.Start("127.0.0.1:0");
    auto stub =
        v1::Chat::NewStub(MakeChannel("127.0.0.1:" + std::to_string(chat_port), tls, "stip-bench"));
    httplib::Client hc("127.0.0.1", http_port);
    hc.set_read_timeout(600);
    hc.set_tcp_nodelay(true);
    const int n = o.latency_tokens;
    struct Run {
      double ttft_ms = 0, tokens_per_s = 0;
      int tokens = 0;
      std::string text;
    };
    auto grpc_run = [&] {
      Run r;
      grpc::ClientContext ctx;
      v1::GenerateRequest req;
      req.set_prompt(o.prompt);
      req.set_max_new_tokens(n);
      req.mutable_sampling()->set_greedy(true);
      auto t0 = Clock::now();
      Clock::time_point first{}, last{};
      auto reader = stub->Generate(&ctx, req);
      v1::GenerateResponse resp;
      int tokens = 0;
      while (reader->Read(&resp)) {
        if (!resp.text().empty() && first == Clock::time_point{}) first = Clock::now();
        tokens += resp.token_ids_size();
        r.text += resp.text();
        last = Clock::now();
      }
      grpc::Status st = reader->Finish();
      if (!st.ok()) throw Internal("bench: Chat.Generate failed: " + st.error_message());
      r.ttft_ms = Ms(t0, first);
      r.tokens = tokens;
      r.tokens_per_s = (tokens - 1) / Seconds(first, last);
      return r;
    };
    auto http_run = [&] {
      Run r;
      Json body = {{"model", "bench"},
                   {"prompt", o.prompt},
                   {"max_tokens", n},
                   {"temperature", 0},
                   {"stream", true}};
      auto t0 = Clock::now();
      Clock::time_point first{}, last{};
      std::string buffer;
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.body = body.dump();
      req.set_header("Content-Type", "application/json");
      req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
        buffer.append(data, len);
        size_t end;
        while ((end = buffer.find("\n\n")) != std::string::npos) {
          std::string ev = buffer.substr(0, end);
          buffer.erase(0, end + 2);
          if (ev.rfind("data: {", 0) != 0) continue;
          Json c = Json::parse(ev.substr(6));
          const std::string piece = c["choices"][0]["text"];
          if (piece.empty()) continue;
          if (first == Clock::time_point{}) first = Clock::now();
          r.text += piece;
          last = Clock::now();
        }
        return true;
      };
      httplib::Response res;
      httplib::Error error = httplib::Error::Success;
      const bool ok = hc.send(req, res, error);
      if (!ok || res.status != 200) throw Internal("bench: HTTP completion failed");
      r.ttft_ms = Ms(t0, first);
      return std::make_pair(r, Seconds(first, last));
    };
    std::vector<double> g_ttft, g_tps, h_ttft, h_tps;
    bool same_text = true;
    for (int i = 0; i < 7; ++i) {
      Run g = grpc_run();
      auto [h, h_decode_s] = http_run();
      same_text = same_text && g.text == h.text;
      if (i == 0) continue;  // warm-up
      g_ttft.push_back(g.ttft_ms);
      g_tps.push_back(g.tokens_per_s);
      h_ttft.push_back(h.ttft_ms);
      // The same tokens as the gRPC run (one SSE chunk may carry several).
      h_tps.push_back((g.tokens - 1) / h_decode_s);
    }
    out["local_api"] = {
        {"note", "one stream at a time, greedy, " + std::to_string(n) +
                     " new tokens; medians of 6 runs each, alternating"},
        {"same_text", same_text},
        {"grpc_chat", {{"ttft_ms", Median(g_ttft)}, {"tokens_per_s", Median(g_tps)}}},
        {"http_openai", {{"ttft_ms", Median(h_ttft)}, {"tokens_per_s", Median(h_tps)}}},
        {"http_over_grpc",
         {{"ttft", Median(h_ttft) / Median(g_ttft)},
          {"time_per_token", Median(g_tps) / Median(h_tps)}}}};
    http.Stop();
    chat_server->Shutdown(std::chrono::system_clock::now());
  }
  srv.Shutdown(std::chrono::milliseconds(1000));
  return out;
}

// Encoders through the wire: the same batch of permuted inputs as one
// Inference.Encode call (gRPC on loopback, plaintext, the server in this
// process, its batch scheduler) against the same STIP checkpoint run
// directly, interleaved: what the call adds (serialization, transport,
// scheduling) on top of the engine.
Json RunEncoderWire(const std::string& dir, int64_t batch, int reps, const std::string& device,
                    const std::string& dtype) {
  c10::InferenceMode inference_mode;
  const std::string tmp = MakeTempDirectoryBeside("/tmp/stip-bench-encoder", 0700);
  struct Cleanup {
    std::string dir;
    ~Cleanup() { RemoveAll(dir); }
  } cleanup{tmp};
  ModelKeys keys = GenerateKeys(LoadModelConfig(dir), FingerprintModel(dir));
  TransformOptions topt;
  topt.progress = false;
  TransformCheckpoint(dir, JoinPath(tmp, "out"), keys, topt);
  const std::string store = JoinPath(tmp, "store");
  const std::string model_dir = JoinPath(store, "models/" + keys.instance_id);
  MakeDirectories(JoinPath(store, "models"), 0700);
  RenamePath(JoinPath(tmp, "out/server"), model_dir);

  ServerOptions so;
  so.listen = "127.0.0.1:0";
  so.tls.insecure = true;
  so.store.dir = store;
  so.store.device = device;
  so.store.dtype = dtype;
  so.store.max_batch = static_cast<int>(batch);
  so.inference.max_sessions = 0;
  so.inference.idle_timeout_s = 0;
  so.inference.policy = std::make_shared<OpenDoorPolicy>();
  StipServer srv(so);
  const std::string address = "127.0.0.1:" + std::to_string(srv.port());
  TlsOptions tls;
  tls.insecure = true;
  RemoteEncoderOptions ro;
  ro.address = address;
  ro.instance_id = keys.instance_id;
  ro.access_token = "bench";
  std::unique_ptr<EncodeBackend> remote =
      MakeRemoteEncoder(MakeChannel(address, tls, "stip-bench"), ro);
  LoadOptions lo;
  lo.device = ParseDevice(device);
  const ModelConfig config = LoadModelConfig(model_dir);
  lo.dtype = ParseComputeDType(dtype, config.dtype, lo.device);
  EncoderServer local = EncoderServer::Load(model_dir, lo);
  auto bundle = EncoderBundle::Load(JoinPath(tmp, "out/client"));

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::Tensor p = at::tensor(at::ArrayRef<int64_t>(bundle->keys().p), at::kLong);
  std::vector<at::Tensor> xps, local_in;
  int64_t request_bytes = 0;
  for (int64_t i = 0; i < batch; ++i) {
    at::Tensor x;
    if (bundle->reads_images()) {
      x = bundle->client().EmbedImage(
          at::rand({config.num_channels, config.image_size, config.image_size}, gen) * 2 - 1);
    } else {
      const int64_t cap = std::max<int64_t>(1, std::min<int64_t>(64, config.max_positions));
      const int64_t len = std::min<int64_t>(cap, 8 + (i * 13) % 57);
      std::vector<int64_t> ids(static_cast<size_t>(len));
      for (auto& id : ids) id = at::randint(0, config.vocab_size, {1}, gen).item<int64_t>();
      x = bundle->client().EmbedTokens(ids);
    }
    xps.push_back(x.index_select(-1, p).to(at::kFloat).contiguous());
    local_in.push_back(xps.back().to(lo.device, lo.dtype));
    request_bytes += xps.back().numel() * 4;
  }
  auto time_remote = [&] {
    auto t0 = Clock::now();
    remote->Encode(xps);
    return Seconds(t0, Clock::now());
  };
  auto time_local = [&] {
    auto t0 = Clock::now();
    for (at::Tensor& o : local.Encode(local_in)) o.to(at::kCPU, at::kFloat);
    return Seconds(t0, Clock::now());
  };
  time_remote();  // warm-up
  time_local();
  std::vector<double> tr, tl, ratios;
  for (int r = 0; r < reps; ++r) {
    if (r % 2 == 0) {
      tr.push_back(time_remote());
      tl.push_back(time_local());
    } else {
      tl.push_back(time_local());
      tr.push_back(time_remote());
    }
    ratios.push_back(tr.back() / tl.back());
  }
  srv.Shutdown(std::chrono::milliseconds(1000));
  const double n = static_cast<double>(batch);
  return {{"transport", "gRPC on loopback, plaintext (no TLS), server in the same process"},
          {"batch", batch},
          {"request_bytes", request_bytes},
          {"wire_per_s", n / Median(tr)},
          {"engine_per_s", n / Median(tl)},
          {"calls_per_s", 1.0 / Median(tr)},
          {"wire_over_engine_time", Median(ratios)}};
}
#endif  // STIP_WITH_GRPC

// Encoders: a batch of inputs (token sequences of different lengths, or
// images) through the plain server and the transformed one, interleaved, on
// the same engine; plus the client's share per input (embed, permute,
// un-permute).
Json RunEncoder(const std::string& dir, int64_t batch, int reps, const LoadOptions& opt) {
  ModelConfig config = LoadModelConfig(dir);
  Checkpoint ckpt = Checkpoint::Open(dir);
  CheckpointSource src(ckpt);
  EncoderClient client(config, LoadClientWeights(config, src, opt));
  EncoderServer plain(config, LoadServerWeights(config, src, opt));
  ModelKeys keys = GenerateKeys(config, "bench");
  std::map<std::string, at::Tensor> t = TransformInMemory(config, src, keys);
  ModelConfig tc = TransformedConfig(config, keys.instance_id);
  MapSource tsrc(t, "transformed");
  EncoderServer stip(tc, LoadServerWeights(tc, tsrc, opt));
  t.clear();
  const bool images = config.patch_size > 0;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  std::vector<at::Tensor> xs, xps;
  int64_t tokens = 0;
  std::vector<double> t_embed, t_perm, t_unperm;
  auto index = [](const Permutation& v) { return at::tensor(at::ArrayRef<int64_t>(v), at::kLong); };
  const at::Tensor p = index(keys.p);
  const bool logits = OutputIsLogits(plain.output());
  const at::Tensor back = index(InversePermutation(logits ? keys.p_c : keys.p));
  for (int64_t i = 0; i < batch; ++i) {
    auto t0 = Clock::now();
    at::Tensor x;
    if (images) {
      x = client.EmbedImage(
          at::rand({config.num_channels, config.image_size, config.image_size}, gen) * 2 - 1);
    } else {
      // Lengths spread over 8 .. 64 (or the model's limit): padding is part of the cost.
      const int64_t cap = std::max<int64_t>(1, std::min<int64_t>(64, config.max_positions));
      const int64_t len = std::min<int64_t>(cap, 8 + (i * 13) % 57);
      std::vector<int64_t> ids(static_cast<size_t>(len));
      for (auto& id : ids) id = at::randint(0, config.vocab_size, {1}, gen).item<int64_t>();
      x = client.EmbedTokens(ids);
    }
    auto t1 = Clock::now();
    at::Tensor xp = x.index_select(-1, p.to(x.device()));
    auto t2 = Clock::now();
    t_embed.push_back(Ms(t0, t1));
    t_perm.push_back(Ms(t1, t2));
    tokens += x.size(0);
    xs.push_back(x.to(opt.device, opt.dtype));
    xps.push_back(xp.to(opt.device, opt.dtype));
  }
  auto time = [&](const EncoderServer& m, const std::vector<at::Tensor>& in) {
    auto t0 = Clock::now();
    std::vector<at::Tensor> o = m.Encode(in);
    Sync(opt.device);
    auto t1 = Clock::now();
    return std::make_pair(Seconds(t0, t1), o);
  };
  time(plain, xs);  // warm-up
  std::vector<at::Tensor> outs = time(stip, xps).second;
  for (const at::Tensor& o : outs) {
    auto t0 = Clock::now();
    at::Tensor u = o.index_select(-1, back.to(o.device())).cpu();
    t_unperm.push_back(Ms(t0, Clock::now()));
  }
  std::vector<double> tp, ts, ratios;
  for (int r = 0; r < reps; ++r) {
    if (r % 2 == 0) {
      tp.push_back(time(plain, xs).first);
      ts.push_back(time(stip, xps).first);
    } else {
      ts.push_back(time(stip, xps).first);
      tp.push_back(time(plain, xs).first);
    }
    ratios.push_back(ts.back() / tp.back());
  }
  const double fp = Median(tp), fs = Median(ts);
  const double n = static_cast<double>(batch);
  return {
      {"model", dir},
      {"family", config.model_type},
      {"output", EncoderOutputName(plain.output())},
      {"unit", images ? "images" : "sequences"},
      {"batch", batch},
      {"tokens", tokens},
      {"reps", reps},
      {"plain_per_s", n / fp},
      {"stip_per_s", n / fs},
      {"stip_over_plain_time", Median(ratios)},
      {"client_ms_per_input",
       {{"embed", Median(t_embed)}, {"permute", Median(t_perm)}, {"unpermute", Median(t_unperm)}}}};
}

}  // namespace
}  // namespace stip

int main(int argc, char** argv) {
  using namespace stip;
  CLI::App app{"stip-bench: STIP vs plaintext on the same engine, side by side"};
  std::string model, preset = "small", device = "auto", dtype = "auto", transform_model;
  std::string probe_dir;
  int64_t batch = 100, tokens = 100, context = 32, client_d = 4096, client_vocab = 32000;
  std::vector<int64_t> decode_batches = {1, 8, 64};
  std::vector<std::string> sections = {"engine", "client", "models", "e2e", "encoders"};
  std::vector<std::string> models, encoder_models;
  int64_t encoder_batch = 32;
  int encoder_reps = 5;
  int reps = 3, steps = 20, warmup = 3, decode_reps = 2, threads = 0, client_reps = 200;
  app.add_option("--model", model, "engine: Hugging Face model directory (default: --preset)");
  app.add_option("--preset", preset,
                 "engine: random weights of a shape: tiny, small, gpt2-124m, llama-7b");
  app.add_option("--device", device, "auto, cpu or cuda (engine and e2e server)");
  app.add_option("--dtype", dtype, "auto, float32, float16, bfloat16");
  app.add_option("--threads", threads, "cores to use (0: $STIP_NUM_THREADS, else all CPUs)");
  app.add_option("--encoder-models", encoder_models,
                 "encoders: model directories (default: models/bert-kjv, models/vit-digits)")
      ->delimiter(',');
  app.add_option("--encoder-batch", encoder_batch, "encoders: inputs per batch");
  app.add_option("--encoder-reps", encoder_reps, "encoders: repetitions (median)");
  app.add_option("--sections", sections, "engine, client, models, e2e (gRPC builds), encoders")
      ->delimiter(',');
  app.add_option("--batch", batch, "forward benchmark: sequences");
  app.add_option("--tokens", tokens, "forward benchmark: positions per sequence");
  app.add_option("--reps", reps, "forward repetitions (median)");
  app.add_option("--decode-batches", decode_batches, "decode benchmark batch sizes")
      ->delimiter(',');
  app.add_option("--context", context, "decode benchmark: prefilled positions");
  app.add_option("--steps", steps, "decode steps timed per rep");
  app.add_option("--warmup", warmup, "decode steps run before timing");
  app.add_option("--decode-reps", decode_reps, "decode repetitions from fresh caches");
  std::string kv_cache = "pool", cuda_graphs = "on", decode_input = "device";
  app.add_option("--decode-input", decode_input,
                 "engine decode: step inputs start on the device or in host memory")
      ->check(CLI::IsMember({"device", "host"}));
  app.add_option("--cuda-graphs", cuda_graphs, "engine on CUDA: replay decode steps as CUDA graphs")
      ->check(CLI::IsMember({"on", "off"}));
  app.add_option("--kv-cache", kv_cache,
                 "engine: pool (one KV pool, batched attention, as the server) or per-sequence")
      ->check(CLI::IsMember({"pool", "per-sequence"}));
  app.add_option("--client-hidden", client_d, "client benchmark: hidden size");
  app.add_option("--client-vocab", client_vocab, "client benchmark: vocabulary");
  app.add_option("--client-reps", client_reps, "client benchmark: tokens timed");
  app.add_option("--models", models, "models and e2e: model directories (default: the demo models)")
      ->delimiter(',');
  app.add_option("--transform-model", transform_model,
                 "time the streaming transform of this model");
  E2eOptions e2e;
  app.add_option("--e2e-sessions", e2e.sessions, "e2e: concurrent sessions")->delimiter(',');
  app.add_option("--e2e-latency-tokens", e2e.latency_tokens,
                 "e2e: decode steps timed (one session per logits format)");
  app.add_option("--e2e-logits", e2e.logits_formats,
                 "e2e: logits formats timed side by side (fp32, fp16, top-k:K); the first is the "
                 "headline")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--e2e-new-tokens", e2e.new_tokens, "e2e: tokens per session (throughput)");
  app.add_option("--e2e-max-batch", e2e.max_batch, "e2e: server's sequences per forward");
  app.add_option("--e2e-batch-wait-us", e2e.batch_wait_us, "e2e: server's batch window");
  app.add_option("--client-rss-probe", probe_dir, "(internal) load a client bundle, print RSS")
      ->group("");
  CLI11_PARSE(app, argc, argv);
  g_kv_pool = kv_cache == "pool";
  const bool decode_input_host = decode_input == "host";

  try {
    if (e2e.logits_formats.empty()) throw InvalidArgument("--e2e-logits needs at least one format");
    for (const std::string& f : e2e.logits_formats) LogitsFormat::Parse(f);  // fail before work
    if (!probe_dir.empty()) return ClientRssProbe(probe_dir);
    const std::set<std::string> want(sections.begin(), sections.end());
    for (const std::string& s : want) {
      if (s != "engine" && s != "client" && s != "models" && s != "e2e" && s != "encoders") {
        throw InvalidArgument("unknown section \"" + s + "\"");
      }
    }
#ifdef STIP_WITH_GRPC
    {
      auto logger = spdlog::stderr_color_mt("stip-bench");
      spdlog::set_default_logger(logger);
      // The in-process server's notices (plaintext loopback, no token key:
      // the bench admits every session) are expected here.
      spdlog::set_level(spdlog::level::err);
    }
#endif
    const CpuRuntime& rt = ConfigureCpuRuntime(threads);
    c10::InferenceMode inference_mode;
    LoadOptions opt;
    opt.device = ParseDevice(device);
    ModelConfig config = model.empty() ? PresetConfig(preset) : LoadModelConfig(model);
    opt.dtype = ParseComputeDType(dtype, config.dtype, opt.device);
    opt.cuda_graphs = cuda_graphs == "on";
    Json out;
    out["device"] = opt.device.str();
    out["dtype"] = at::toString(opt.dtype);
    out["model"] = model.empty() ? "preset:" + preset : model;
    out["threads"] = rt.threads;
    out["runtime"] = {{"libtorch", TORCH_VERSION},
                      {"threads", rt.threads},
                      {"aten_threads", rt.aten_threads},
                      {"blas_threads", rt.blas_threads},
                      {"cpus", static_cast<int>(std::thread::hardware_concurrency())},
                      {"openblas_core_detected", rt.blas_core_detected},
                      {"openblas_core", rt.blas_core}};
    std::fprintf(stderr, "runtime: LibTorch %s, %d threads (ATen %d, OpenBLAS %d), OpenBLAS %s%s\n",
                 TORCH_VERSION, rt.threads, rt.aten_threads, rt.blas_threads,
                 rt.blas_core.empty() ? "-" : rt.blas_core.c_str(),
                 rt.blas_core != rt.blas_core_detected
                     ? (" (detected " + rt.blas_core_detected + ")").c_str()
                     : "");

    if (want.count("engine")) {
      Engines e;
      if (model.empty()) {
        RandomSource src(config);
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

      // Forward batch x tokens, interleaved (the order flips every rep).
      tokens = std::min(tokens, config.max_positions);
      std::vector<at::Tensor> xs, xps;
      for (int64_t i = 0; i < batch; ++i) {
        xs.push_back(rand_x(tokens));
        xps.push_back(PermuteHidden(xs.back(), e.keys.p));
      }
      TimeForward(*e.plain, xs);  // warm-up (allocator, caches, BLAS buffers)
      TimeForward(*e.stip, xps);
      std::vector<double> tp, ts, ratios;
      for (int r = 0; r < reps; ++r) {
        if (r % 2 == 0) {
          tp.push_back(TimeForward(*e.plain, xs));
          ts.push_back(TimeForward(*e.stip, xps));
        } else {
          ts.push_back(TimeForward(*e.stip, xps));
          tp.push_back(TimeForward(*e.plain, xs));
        }
        ratios.push_back(ts.back() / tp.back());
      }
      const double fp = Median(tp), fs = Median(ts);
      const double ntok = static_cast<double>(batch * tokens);
      out["forward"] = {{"batch", batch},
                        {"tokens", tokens},
                        {"reps", reps},
                        {"plain_tokens_per_s", ntok / fp},
                        {"stip_tokens_per_s", ntok / fs},
                        {"stip_over_plain_time", fs / fp},
                        {"stip_over_plain_time_median_of_pairs", Median(ratios)},
                        {"stip_over_plain_time_per_rep", ratios}};
      std::fprintf(stderr, "%-28s %14s %14s %8s\n", "engine", "plain", "stip", "ratio");
      std::fprintf(stderr, "%-28s %12.0f/s %12.0f/s %8.3f\n",
                   ("forward " + std::to_string(batch) + "x" + std::to_string(tokens)).c_str(),
                   ntok / fp, ntok / fs, fs / fp);

      // Decode ms/step.
      context = std::max<int64_t>(
          1, std::min<int64_t>(context, config.max_positions - warmup - steps - 1));
      Json dec = Json::array();
      for (int64_t b : decode_batches) {
        std::vector<at::Tensor> pre, prep, step, stepp;
        for (int64_t i = 0; i < b; ++i) {
          pre.push_back(rand_x(context));
          prep.push_back(PermuteHidden(pre.back(), e.keys.p));
          // --decode-input host: in host memory, as the server receives it.
          step.push_back(decode_input_host ? at::randn({1, config.hidden_size}, gen) : rand_x(1));
          stepp.push_back(PermuteHidden(step.back(), e.keys.p));
        }
        PairTimes t = TimeDecodePair(e, pre, prep, step, stepp, decode_reps, warmup, steps);
        const double dp = Median(t.plain), ds = Median(t.stip);
        std::vector<double> pair_ratios;  // steps run back to back
        for (size_t i = 0; i < t.plain.size(); ++i) pair_ratios.push_back(t.stip[i] / t.plain[i]);
        dec.push_back(
            {{"batch", b},
             {"context", context},
             {"steps_timed", t.plain.size()},
             {"plain_ms_per_step", dp},
             {"stip_ms_per_step", ds},
             {"plain_tokens_per_s", b * 1e3 / dp},
             {"stip_tokens_per_s", b * 1e3 / ds},
             {"stip_over_plain_time", ds / dp},
             {"stip_over_plain_time_median_of_pairs", Median(pair_ratios)},
             {"plain_host_ms_per_step", Median(t.plain_host)},
             {"stip_host_ms_per_step", Median(t.stip_host)},
             {"kv_cache", g_kv_pool ? "pool" : "per-sequence"},
             {"cuda_graphs_captured", e.plain->decode_graphs() + e.stip->decode_graphs()}});
        std::fprintf(stderr, "%-28s %11.3f ms %11.3f ms %8.3f   (host %.3f / %.3f ms)\n",
                     ("decode batch " + std::to_string(b)).c_str(), dp, ds, ds / dp,
                     Median(t.plain_host), Median(t.stip_host));
      }
      out["decode"] = dec;
    }

    // Client: work per token at d x V (embed, permute, un-permute, sample), on the CPU.
    if (want.count("client")) {
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(2);
      at::Tensor table = at::randn({client_vocab, client_d}, gen);
      ClientWeights cw;
      cw.token_embedding = table;
      ModelConfig cc = PresetConfig("tiny");
      cc.vocab_size = client_vocab;
      cc.hidden_size = client_d;
      cc.positions = PositionKind::kRope;
      ClientModel client(cc, cw);
      ClientPermuter perm(RandomPermutation(client_d), RandomPermutation(client_vocab));
      at::Tensor logits = at::randn({1, client_vocab}, gen);
      SamplingOptions greedy_options;
      greedy_options.greedy = true;
      Sampler greedy(greedy_options);
      SamplingOptions so;
      so.temperature = 0.8;
      so.top_p = 0.9;
      so.seed = 1;
      Sampler nucleus(so);
      std::vector<double> t_embed, t_perm, t_unperm, t_greedy, t_topp, t_total, t_topk_check;
      // A row as the client decodes it with logits format top-k:64: -inf but 64.
      at::Tensor topk_row =
          at::full({client_vocab}, -std::numeric_limits<float>::infinity(), at::kFloat);
      {
        auto [v, i] = logits[0].topk(64);
        topk_row.index_put_({i}, v);
      }
      int64_t id = 17;
      const std::vector<int64_t> history;
      for (int i = 0; i < client_reps + 10; ++i) {
        auto t0 = Clock::now();
        at::Tensor x = client.Embed(std::vector<int64_t>{id}, i);
        auto t1 = Clock::now();
        at::Tensor xp = perm.Permute(x);
        auto t2 = Clock::now();
        at::Tensor o = perm.Unpermute(logits)[0];
        auto t3 = Clock::now();
        id = greedy.Next(o, history);
        auto t4 = Clock::now();
        if (i % 10 == 0) nucleus.Next(o, history);  // slow: sorts the vocabulary
        auto t5 = Clock::now();
#ifdef STIP_WITH_GRPC
        // With logits format top-k:64, the per-token tie check of the client.
        CheckTopKRowExact(topk_row, LogitsFormat{LogitsFormat::Kind::kTopK, 64}, greedy_options);
        if (i >= 10) t_topk_check.push_back(Ms(t5, Clock::now()));
#endif
        (void)xp;
        if (i < 10) continue;  // warm-up
        t_embed.push_back(Ms(t0, t1));
        t_perm.push_back(Ms(t1, t2));
        t_unperm.push_back(Ms(t2, t3));
        t_greedy.push_back(Ms(t3, t4));
        if (i % 10 == 0) t_topp.push_back(Ms(t4, t5));
        t_total.push_back(Ms(t0, t4));
      }
      const double stip_only = Median(t_perm) + Median(t_unperm);
      const double work = Median(t_embed) + stip_only + Median(t_greedy);
      out["client"] = {{"hidden", client_d},
                       {"vocab", client_vocab},
                       {"tokens_timed", t_embed.size()},
                       {"embed_ms", Median(t_embed)},
                       {"permute_ms", Median(t_perm)},
                       {"unpermute_ms", Median(t_unperm)},
                       {"sample_greedy_ms", Median(t_greedy)},
                       {"sample_top_p_ms", Median(t_topp)},
                       {"stip_overhead_ms_per_token", stip_only},
                       {"client_work_ms_per_token", work},
                       {"client_work_ms_per_token_measured", Median(t_total)}};
      if (!t_topk_check.empty()) {
        out["client"]["topk64_tie_check_ms"] = Median(t_topk_check);
        std::fprintf(stderr, "client: with --logits top-k:64, the tie check adds %.4f ms/token\n",
                     Median(t_topk_check));
      }
      std::fprintf(stderr,
                   "client d=%lld V=%lld: embed %.4f + permute %.4f + un-permute %.4f + greedy "
                   "%.4f = %.4f ms/token (STIP's share %.4f ms); top-p sampling %.3f ms\n",
                   static_cast<long long>(client_d), static_cast<long long>(client_vocab),
                   Median(t_embed), Median(t_perm), Median(t_unperm), Median(t_greedy), work,
                   stip_only, Median(t_topp));
    }

    // Models: transform, client footprint; then e2e on the same transformed output.
    const bool want_models = want.count("models") != 0;
#ifdef STIP_WITH_GRPC
    const bool want_e2e = want.count("e2e") != 0;
#else
    const bool want_e2e = false;
    if (want.count("e2e")) {
      out["e2e"] = "skipped: this stip-bench was built without gRPC (STIP_WITH_GRPC=OFF)";
      std::fprintf(stderr, "e2e: skipped (built without gRPC)\n");
    }
#endif
    if (want_models || want_e2e) {
      if (models.empty()) {
        for (const char* n : {"kjv-llama", "kjv-gpt2"}) {
          const std::string d = JoinPath(STIP_MODELS_DIR, n);
          if (PathExists(JoinPath(d, "config.json"))) models.push_back(d);
        }
      }
      Json mj = Json::array(), ej = Json::array();
      for (const std::string& dir : models) {
        PreparedModel m = PrepareModel(dir);
        try {
          if (want_models) {
            mj.push_back(m.json);
            std::fprintf(
                stderr,
                "model %-10s transform %.3f GB/s (%.1f MB); client bundle %.2f MB on disk, "
                "%.2f MB in memory (tensors %.2f MB)\n",
                m.name.c_str(), m.json["transform"]["gb_per_s"].get<double>(),
                m.json["transform"]["bytes"].get<double>() / 1e6,
                m.json["client_bundle_bytes_on_disk"].get<double>() / 1e6,
                m.json["client_rss_delta_bytes"].get<double>() / 1e6,
                m.json["client_tensor_bytes"].get<double>() / 1e6);
          }
#ifdef STIP_WITH_GRPC
          if (want_e2e) {
            e2e.device = device;
            e2e.dtype = dtype;
            Json r = RunE2e(m, e2e);
            const Json& l = r["latency"]["per_token_ms"];
            std::fprintf(
                stderr,
                "e2e %-10s per token %.3f ms: client %.3f (embed %.3f, permute %.3f, "
                "un-permute %.3f, sample %.3f, detokenize %.3f), transport+serialization "
                "%.3f, server %.3f; %lld+%lld bytes/token\n",
                m.name.c_str(), l["total"].get<double>(), l["client_work"].get<double>(),
                l["embed"].get<double>(), l["permute"].get<double>(), l["unpermute"].get<double>(),
                l["sample_greedy"].get<double>(), l["detokenize"].get<double>(),
                l["transport_and_serialization"].get<double>(), l["server_compute"].get<double>(),
                r["bytes_per_token"]["request_message"].get<long long>(),
                r["bytes_per_token"]["response_message"].get<long long>());
            for (const Json& f : r["logits_formats"]) {
              const Json& fl = f["per_token_ms"];
              std::fprintf(stderr,
                           "e2e %-10s logits %-9s per token %.3f ms: round trip %.3f (server "
                           "%.3f), client %.3f; response %lld bytes/token%s\n",
                           m.name.c_str(), f["logits_format"].get<std::string>().c_str(),
                           fl["total"].get<double>(), fl["round_trip"].get<double>(),
                           fl["server_compute"].get<double>(), fl["client_work"].get<double>(),
                           f["bytes_per_token"]["response_message"].get<long long>(),
                           f["same_tokens_as_first_format"].get<bool>() ? "" : " (OTHER TOKENS)");
            }
            for (const Json& t : r["throughput"]) {
              std::fprintf(
                  stderr, "e2e %-10s %2d sessions: %.0f tokens/s (%.2f sequences/forward)\n",
                  m.name.c_str(), t["sessions"].get<int>(), t["tokens_per_s"].get<double>(),
                  t["mean_sequences_per_forward"].get<double>());
            }
            ej.push_back(r);
          }
#endif
        } catch (...) {
          RemoveAll(m.tmp);
          throw;
        }
        RemoveAll(m.tmp);
      }
      if (want_models) out["models"] = mj;
      if (want_e2e) out["e2e"] = ej;
    }

    if (want.count("encoders")) {
      if (encoder_models.empty()) {
        for (const char* n : {"bert-kjv", "vit-digits"}) {
          const std::string d = JoinPath(STIP_MODELS_DIR, n);
          if (PathExists(JoinPath(d, "config.json"))) encoder_models.push_back(d);
        }
      }
      Json ej = Json::array();
      LoadOptions eopt = opt;
      eopt.dtype = ParseComputeDType(dtype, "float32", opt.device);
      for (const std::string& dir : encoder_models) {
        Json r = RunEncoder(dir, encoder_batch, encoder_reps, eopt);
#ifdef STIP_WITH_GRPC
        r["wire"] = RunEncoderWire(dir, encoder_batch, encoder_reps, device, "float32");
        std::fprintf(stderr,
                     "encoder %-10s through Encode (gRPC): %.1f %s/s, %.1f calls/s of %lld; "
                     "wire/engine time %.3f\n",
                     BaseName(dir).c_str(), r["wire"]["wire_per_s"].get<double>(),
                     r["unit"].get<std::string>().c_str(), r["wire"]["calls_per_s"].get<double>(),
                     static_cast<long long>(encoder_batch),
                     r["wire"]["wire_over_engine_time"].get<double>());
#endif
        std::fprintf(stderr,
                     "encoder %-10s %s: plain %.1f %s/s, STIP %.1f %s/s (STIP/plain time %.3f); "
                     "client per input: embed %.3f + permute %.4f + un-permute %.4f ms\n",
                     BaseName(dir).c_str(), r["output"].get<std::string>().c_str(),
                     r["plain_per_s"].get<double>(), r["unit"].get<std::string>().c_str(),
                     r["stip_per_s"].get<double>(), r["unit"].get<std::string>().c_str(),
                     r["stip_over_plain_time"].get<double>(),
                     r["client_ms_per_input"]["embed"].get<double>(),
                     r["client_ms_per_input"]["permute"].get<double>(),
                     r["client_ms_per_input"]["unpermute"].get<double>());
        ej.push_back(r);
      }
      out["encoders"] = ej;
    }

    if (!transform_model.empty()) {
      std::string tmp = MakeTempDirectoryBeside("/tmp/stip-bench-transform", 0700);
      ModelKeys keys =
          GenerateKeys(LoadModelConfig(transform_model), FingerprintModel(transform_model));
      TransformOptions topt;
      topt.progress = false;
      TransformStats s;
      try {
        s = TransformCheckpoint(transform_model, tmp + "/out", keys, topt);
      } catch (...) {
        RemoveAll(tmp);
        throw;
      }
      RemoveAll(tmp);
      out["transform"] = {{"model", transform_model},
                          {"bytes", s.bytes_read},
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
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stip-bench: internal error: %s\n", e.what());
    return 3;
  }
}
