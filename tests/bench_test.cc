// stip-bench runs and prints one JSON object with the expected keys (tiny
// sizes; speed itself is never asserted by a test).
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

namespace {

// Runs a command, returns its stdout (stderr goes to the test log) and exit status.
std::string RunCommand(const std::string& cmd, int* status) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    *status = -1;
    return "";
  }
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  *status = pclose(p);
  return out;
}

TEST(BenchTest, TinyRunEmitsJsonWithEveryKey) {
  int status = 0;
  const std::string out =
      RunCommand(std::string("'") + STIP_BENCH_BIN +
                     "' --preset tiny --batch 2 --tokens 8 --reps 1 "
                     "--decode-batches 1,2 --steps 2 --warmup 1 --decode-reps 1 "
                     "--client-hidden 64 --client-vocab 200 --client-reps 5 "
                     "--models " STIP_MODELS_DIR
                     "/kjv-gpt2 "
                     "--e2e-latency-tokens 6 --e2e-new-tokens 3 --e2e-sessions 1,2 "
                     "--encoder-batch 3 --encoder-reps 1",
                 &status);
  ASSERT_EQ(status, 0) << out;
  nlohmann::json j;
  ASSERT_NO_THROW(j = nlohmann::json::parse(out)) << out;
  for (const char* key : {"device", "dtype", "threads", "runtime", "forward", "decode", "client",
                          "models", "e2e", "encoders"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_GE(j["runtime"]["threads"].get<int>(), 1);
  EXPECT_GE(j["runtime"]["aten_threads"].get<int>(), 1);
  EXPECT_GT(j["forward"]["plain_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(j["forward"]["stip_over_plain_time"].get<double>(), 0);
  ASSERT_EQ(j["decode"].size(), 2u);
  for (const auto& d : j["decode"]) {
    for (const char* key :
         {"batch", "plain_ms_per_step", "stip_ms_per_step", "stip_over_plain_time"}) {
      EXPECT_TRUE(d.contains(key)) << key;
    }
  }
  for (const char* key :
       {"embed_ms", "permute_ms", "unpermute_ms", "sample_greedy_ms", "client_work_ms_per_token"}) {
    EXPECT_TRUE(j["client"].contains(key)) << key;
  }
  ASSERT_EQ(j["models"].size(), 1u);
  const auto& m = j["models"][0];
  EXPECT_EQ(m["model"], "kjv-gpt2");
  EXPECT_GT(m["transform"]["gb_per_s"].get<double>(), 0);
  EXPECT_GT(m["client_bundle_bytes_on_disk"].get<double>(), 0);
  EXPECT_GT(m["client_rss_delta_bytes"].get<double>(), 0);
  // Encoders: the demo BERT (sequences) and ViT (images), plain and STIP side by side.
  ASSERT_EQ(j["encoders"].size(), 2u);
  for (const auto& e : j["encoders"]) {
    EXPECT_GT(e["plain_per_s"].get<double>(), 0);
    EXPECT_GT(e["stip_per_s"].get<double>(), 0);
    EXPECT_GT(e["stip_over_plain_time"].get<double>(), 0);
    EXPECT_EQ(e["batch"].get<int>(), 3);
  }
  EXPECT_EQ(j["encoders"][0]["unit"], "sequences");
  EXPECT_EQ(j["encoders"][1]["unit"], "images");
#ifdef STIP_WITH_GRPC
  ASSERT_TRUE(j["e2e"].is_array());
  ASSERT_EQ(j["e2e"].size(), 1u);
  const auto& e = j["e2e"][0];
  for (const char* key :
       {"embed", "permute", "unpermute", "sample_greedy", "detokenize", "client_work", "round_trip",
        "server_compute", "transport_and_serialization", "total"}) {
    EXPECT_TRUE(e["latency"]["per_token_ms"].contains(key)) << key;
  }
  EXPECT_GT(e["latency"]["per_token_ms"]["server_compute"].get<double>(), 0);
  EXPECT_EQ(e["bytes_per_token"]["x_prime_payload"].get<int64_t>(), 256 * 4);
  EXPECT_EQ(e["bytes_per_token"]["o_prime_payload"].get<int64_t>(), 4096 * 4);
  ASSERT_EQ(e["throughput"].size(), 2u);
  EXPECT_EQ(e["throughput"][1]["sessions"].get<int>(), 2);
  EXPECT_GT(e["throughput"][1]["tokens_per_s"].get<double>(), 0);
#else
  EXPECT_TRUE(j["e2e"].is_string());  // skipped without gRPC
#endif
}

TEST(BenchTest, RejectsAnUnknownSection) {
  int status = 0;
  RunCommand(std::string("'") + STIP_BENCH_BIN + "' --sections engine,nonsense 2>/dev/null",
             &status);
  EXPECT_NE(status, 0);
}

}  // namespace
