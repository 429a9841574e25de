// Load: many concurrent sessions against a real stip-server process (TLS,
// demo model), each through the client library (Generator + RemoteSession,
// what stip-client runs), every output checked against the plain engine's
// greedy output. Prints the aggregate tokens/s and the server's peak memory
// (VmHWM). Speed is reported, never asserted.
//
// ctest runs a short version (32 sessions x 8 tokens). A longer run for a
// report:
//   STIP_LOAD_SESSIONS=64 STIP_LOAD_TOKENS=64 build/tests/load_test
// (STIP_LOAD_MODEL=DIR for another model than models/kjv-llama;
// STIP_LOAD_SERVER_FLAGS="--max-batch 64 --batch-wait-us 2000" for the server.)
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "client/bundle_store.h"
#include "client/generator.h"
#include "client/remote_session.h"
#include "common/engine/causal_lm.h"
#include "common/rpc/tls.h"
#include "tests/deployment.h"

namespace stip {
namespace {

using test::Deployment;

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}
std::string EnvString(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}
std::vector<std::string> Words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

const std::vector<std::string> kPrompts = {
    "And God said,",
    "In the beginning",
    "The LORD is my shepherd;",
    "And Moses said unto the LORD,",
    "Blessed are the",
    "And it came to pass",
    "Let there be light",
    "Thou shalt not",
};

TEST(LoadTest, ConcurrentSessionsAllGetThePlainEnginesGreedyOutput) {
  const int sessions = EnvInt("STIP_LOAD_SESSIONS", 32);
  const int tokens = EnvInt("STIP_LOAD_TOKENS", 8);
  const std::string model = EnvString("STIP_LOAD_MODEL", test::ModelDir("kjv-llama"));
  std::vector<std::string> flags = {"--max-sessions", std::to_string(std::max(64, sessions)),
                                    "--max-batch", std::to_string(std::min(sessions, 64))};
  for (const std::string& f : Words(EnvString("STIP_LOAD_SERVER_FLAGS", ""))) flags.push_back(f);
  ASSERT_GE(sessions, 1);
  ASSERT_GE(tokens, 1);

  Deployment d;
  const std::string alice = d.Setup(model, {"alice"}, flags)[0];
  const auto creds = test::LoadUserCredentials(alice);
  std::shared_ptr<const ClientBundle> bundle =
      ClientBundle::Load(alice + "/bundle", creds.instance_id);
  const int64_t rss_loaded = test::PeakRssBytes(d.server().pid());

  // One connection per session, as separate clients would have.
  std::vector<std::unique_ptr<Generator>> gens;
  for (int i = 0; i < sessions; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
    args.SetMaxReceiveMessageSize(kMaxMessageBytes);
    args.SetMaxSendMessageSize(kMaxMessageBytes);
    RemoteSessionOptions o;
    o.address = creds.server_address;
    o.instance_id = creds.instance_id;
    o.access_token = creds.access_token;
    o.expected_hidden = bundle->hidden_size();
    o.expected_vocab = bundle->vocab_size();
    TlsOptions tls = d.ClientTls();
    auto channel =
        grpc::CreateCustomChannel(creds.server_address, MakeChannelCredentials(tls, "load"), args);
    gens.push_back(
        std::make_unique<Generator>(bundle, std::make_unique<RemoteSession>(channel, o)));
    gens.back()->Connect();
  }

  GenerateOptions go;
  go.max_new_tokens = tokens;
  go.sampling.greedy = true;
  go.stop_at_eos = false;
  std::vector<GenerateResult> results(sessions);
  std::vector<std::string> errors(sessions);
  std::mutex mu;
  std::condition_variable cv;
  bool go_now = false;
  std::vector<std::thread> threads;
  for (int i = 0; i < sessions; ++i) {
    threads.emplace_back([&, i] {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return go_now; });
      }
      try {
        results[i] = gens[i]->Generate(kPrompts[i % kPrompts.size()], go);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  const auto t0 = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(mu);
    go_now = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t rss_peak = test::PeakRssBytes(d.server().pid());
  gens.clear();

  // The plain engine's greedy continuation of each distinct prompt.
  CausalLM plain = CausalLM::Load(model);
  std::map<std::vector<int64_t>, std::vector<int64_t>> expected;
  int64_t generated = 0;
  for (int i = 0; i < sessions; ++i) {
    ASSERT_TRUE(errors[i].empty()) << "session " << i << ": " << errors[i];
    const std::vector<int64_t>& prompt = results[i].prompt_ids;
    auto it = expected.find(prompt);
    if (it == expected.end()) {
      GreedyOptions g;
      g.max_new_tokens = tokens;
      std::vector<int64_t> full = GreedyGenerate(*plain.client, *plain.server, {prompt}, g)[0];
      it = expected.emplace(prompt, std::vector<int64_t>(full.begin() + prompt.size(), full.end()))
               .first;
    }
    EXPECT_EQ(results[i].token_ids, it->second)
        << "session " << i << " (" << kPrompts[i % 8] << ")";
    generated += static_cast<int64_t>(results[i].token_ids.size());
  }
  EXPECT_EQ(generated, int64_t{sessions} * tokens);
  const double tps = static_cast<double>(generated) / wall;
  std::printf(
      "load: %d concurrent sessions x %d tokens (%s, TLS, one connection each): %lld tokens "
      "in %.2f s = %.1f tokens/s aggregate; stip-server peak RSS %.1f MiB (%.1f MiB after "
      "loading the model)\n",
      sessions, tokens, model.substr(model.rfind('/') + 1).c_str(),
      static_cast<long long>(generated), wall, tps, rss_peak / 1048576.0, rss_loaded / 1048576.0);
  RecordProperty("sessions", sessions);
  RecordProperty("tokens_per_session", tokens);
  RecordProperty("aggregate_tokens_per_s", std::to_string(tps));
  RecordProperty("server_peak_rss_bytes", std::to_string(rss_peak));
}

}  // namespace
}  // namespace stip
