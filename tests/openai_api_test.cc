// The client daemon's OpenAI-compatible HTTP API (client/http_api.h) against a
// real three-party deployment on loopback (tests/deployment.h): the official
// OpenAI client (npm "openai", installed into the build directory when
// missing), curl for the wire format (SSE framing, error shapes), 16
// concurrent streams, a client that disconnects, and the Prometheus metrics of
// the three daemons. The oracles: the demo model's Hugging Face greedy
// reference (models/*/reference.json) and the plain model run in this process
// with the engine (greedy ids, log-softmax).
#include <ATen/ATen.h>
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "common/engine/causal_lm.h"
#include "common/tokenizer/tokenizer.h"
#include "tests/deployment.h"

namespace stip::test {
namespace {

using nlohmann::json;

const std::string kModel = "kjv-gpt2";
const std::string kApiKey = "sk-test-0123456789abcdef";
const std::string kNodeDir = kBin + "/tests/node";
const std::string kOpenAiPackage = "openai@4.95.0";
const std::string kPlaywrightPackage = "playwright-core@1.57.0";  // Node 18 (Debian 12)

// "http://127.0.0.1:PORT" from a daemon's "... on http://127.0.0.1:PORT[/metrics] ..." line.
std::string UrlAfter(const Daemon& d, const std::string& marker) {
  std::string v = d.Value(marker);
  v = v.substr(0, v.find(' '));
  const std::string suffix = "/metrics";
  if (v.size() > suffix.size() && v.compare(v.size() - suffix.size(), suffix.size(), suffix) == 0) {
    v.resize(v.size() - suffix.size());
  }
  EXPECT_EQ(v.rfind("http://", 0), 0u) << marker << " in the output of the daemon";
  return v;
}

struct Http {
  int status = 0;
  std::string body;
  std::string headers;
};

// curl: status, headers and body.
Http Curl(const std::vector<std::string>& args, double seconds = 120) {
  std::vector<std::string> argv = {"/usr/bin/curl", "-sS", "-N",          "-D",
                                   "/dev/stderr",   "-o",  "/dev/stdout", "-w",
                                   "\n%{http_code}"};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult r = test::Run(argv, seconds);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  Http h;
  const size_t nl = r.out.rfind('\n');
  if (nl == std::string::npos) return h;
  h.status = std::atoi(r.out.c_str() + nl + 1);
  h.body = r.out.substr(0, nl);
  h.headers = r.err;
  return h;
}

Http Post(const std::string& url, const std::string& body, const std::string& key = kApiKey) {
  std::vector<std::string> args = {
      "-X", "POST", url, "-H", "Content-Type: application/json", "--data-binary", body};
  if (!key.empty()) {
    args.push_back("-H");
    args.push_back("Authorization: Bearer " + key);
  }
  return Curl(args);
}

// The value of an unlabelled sample (or one whose labels contain `labels`)
// in Prometheus text; -1 if absent.
double Sample(const std::string& text, const std::string& name, const std::string& labels = "") {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    const std::string key = line.substr(0, sp);
    const std::string metric = key.substr(0, key.find('{'));
    if (metric != name) continue;
    if (!labels.empty() && key.find(labels) == std::string::npos) continue;
    return std::stod(line.substr(sp + 1));
  }
  return -1;
}

// Checks the Prometheus text exposition format line by line: HELP/TYPE
// comments, then samples "name{label="value",...} number".
void ExpectPrometheusText(const std::string& text, const std::string& who) {
  static const std::regex sample(
      R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? )"
      R"(([-+]?[0-9.]+([eE][-+]?[0-9]+)?|[-+]?Inf|NaN)( [0-9]+)?$)");
  static const std::regex comment(
      R"(^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* )"
      R"((counter|gauge|histogram|summary|untyped))$)");
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      EXPECT_TRUE(std::regex_match(line, comment)) << who << ": " << line;
    } else {
      EXPECT_TRUE(std::regex_match(line, sample)) << who << ": " << line;
      ++samples;
    }
  }
  EXPECT_GT(samples, 3) << who;
}

// The plain model in this process: greedy continuations and log-softmax.
class PlainModel {
 public:
  PlainModel()
      : lm_(CausalLM::Load(ModelDir(kModel))), tok_(Tokenizer::FromDirectory(ModelDir(kModel))) {}

  std::vector<int64_t> PromptIds(const std::string& prompt) const {
    EncodeOptions enc;
    enc.add_special_tokens = true;
    return tok_->Encode(prompt, enc);
  }
  // The greedy continuation's ids (ending before an EOS).
  std::vector<int64_t> Greedy(const std::vector<int64_t>& prompt, int n) const {
    GreedyOptions o;
    o.max_new_tokens = n;
    o.eos_ids = lm_.client->config().eos_token_ids;
    std::vector<int64_t> all = GreedyGenerate(*lm_.client, *lm_.server, {prompt}, o)[0];
    std::vector<int64_t> out(all.begin() + static_cast<long>(prompt.size()), all.end());
    for (size_t i = 0; i < out.size(); ++i) {
      for (int64_t e : o.eos_ids) {
        if (out[i] == e) {
          out.resize(i);
          return out;
        }
      }
    }
    return out;
  }
  // The text the client shows for the continuation.
  std::string Text(const std::vector<int64_t>& prompt, const std::vector<int64_t>& cont) const {
    std::vector<int64_t> all = prompt;
    all.insert(all.end(), cont.begin(), cont.end());
    return tok_->Decode(all, true).substr(tok_->Decode(prompt, true).size());
  }
  // log-softmax [S, V] (FP64) of every position of `ids`.
  at::Tensor LogSoftmax(const std::vector<int64_t>& ids) const {
    KvCache cache = lm_.server->NewCache();
    at::Tensor logits = lm_.server->Forward({{lm_.client->Embed(ids, 0), &cache, true}})[0];
    return at::log_softmax(logits.to(at::kDouble), -1);
  }
  const Tokenizer& tokenizer() const { return *tok_; }

 private:
  CausalLM lm_;
  std::unique_ptr<Tokenizer> tok_;
};

class OpenAiApiTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    d_ = new Deployment();
    d_->StartServer({"--metrics-listen", "127.0.0.1:0"});
    d_->StartDeveloper(ModelDir(kModel), {"--metrics-listen", "127.0.0.1:0"});
    const std::string data = d_->Register("alice");
    const std::string key_file = d_->dir() + "/api-key";
    WriteFileAtomic(key_file, kApiKey + "\n", 0600);
    client_ = new Daemon(
        {kClientBin, "serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--listen-insecure",
         "--http", "127.0.0.1:0", "--api-key-file", key_file, "--metrics-listen", "127.0.0.1:0"},
        d_->dir() + "/client-daemon.log");
    client_->WaitListening(120);
    http_ = UrlAfter(*client_, "HTTP API on ");
    client_metrics_ = UrlAfter(*client_, "metrics on ");
    server_metrics_ = UrlAfter(d_->server(), "metrics on ");
    developer_metrics_ = UrlAfter(d_->developer(), "metrics on ");
    plain_ = new PlainModel();
    reference_ = ReferenceText(kModel).substr(std::string("And God said,").size());
  }
  static void TearDownTestSuite() {
    delete client_;
    delete plain_;
    delete d_;
  }

  static Deployment* d_;
  static Daemon* client_;
  static PlainModel* plain_;
  static std::string http_, client_metrics_, server_metrics_, developer_metrics_, reference_;
};

Deployment* OpenAiApiTest::d_ = nullptr;
Daemon* OpenAiApiTest::client_ = nullptr;
PlainModel* OpenAiApiTest::plain_ = nullptr;
std::string OpenAiApiTest::http_, OpenAiApiTest::client_metrics_, OpenAiApiTest::server_metrics_,
    OpenAiApiTest::developer_metrics_, OpenAiApiTest::reference_;

// The official client: models, chat (plain and streamed), logprobs, legacy
// completions, an unknown model.
TEST_F(OpenAiApiTest, OfficialOpenAiClient) {
  RunResult npm =
      test::Run({"/bin/bash", kSrc + "/tests/web/ensure-npm.sh", kNodeDir, kOpenAiPackage}, 600);
  ASSERT_EQ(npm.exit_code, 0) << npm.err;
  RunResult r = test::Run({"/usr/bin/env", "node", kSrc + "/tests/web/openai_client.mjs", kNodeDir,
                           http_ + "/v1", kApiKey, "gpt2", "And God said,", "40"},
                          300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json out = json::parse(r.out);
  EXPECT_EQ(out["models"], json::array({"gpt2"}));
  EXPECT_EQ(out["chat"]["text"], reference_);
  EXPECT_EQ(out["chat"]["object"], "chat.completion");
  EXPECT_EQ(out["chat"]["finish_reason"], "length");
  EXPECT_EQ(out["chat"]["usage"]["completion_tokens"], 40);
  EXPECT_EQ(out["stream"]["text"], reference_);
  EXPECT_EQ(out["stream"]["finish_reason"], "length");
  EXPECT_GT(out["stream"]["chunks"].get<int>(), 10);
  EXPECT_EQ(out["stream"]["usage"]["completion_tokens"], 40);
  EXPECT_EQ(out["completion"]["text"], reference_);
  EXPECT_EQ(out["unknown_model"]["status"], 404);
  EXPECT_EQ(out["unknown_model"]["code"], "model_not_found");

  // Log-probabilities against the plain model's log-softmax.
  const std::vector<int64_t> prompt = plain_->PromptIds("And God said,");
  const std::vector<int64_t> cont = plain_->Greedy(prompt, 40);
  ASSERT_EQ(cont.size(), 40u);
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), cont.begin(), cont.end());
  at::Tensor lp = plain_->LogSoftmax(all);
  const json& content = out["logprobs"];
  ASSERT_EQ(content.size(), 40u);
  double worst = 0;
  for (size_t i = 0; i < 40; ++i) {
    at::Tensor row = lp[static_cast<int64_t>(prompt.size() + i) - 1];
    EXPECT_EQ(content[i]["token"], plain_->tokenizer().Decode({cont[i]})) << i;
    worst = std::max(worst,
                     std::abs(content[i]["logprob"].get<double>() - row[cont[i]].item<double>()));
    auto top = row.topk(5);
    const json& alts = content[i]["top_logprobs"];
    ASSERT_EQ(alts.size(), 5u);
    for (int64_t j = 0; j < 5; ++j) {
      worst = std::max(
          worst, std::abs(alts[j]["logprob"].get<double>() - std::get<0>(top)[j].item<double>()));
      EXPECT_EQ(alts[j]["token"], plain_->tokenizer().Decode({std::get<1>(top)[j].item<int64_t>()}))
          << i << "/" << j;
    }
  }
  EXPECT_LE(worst, 1e-4);
}

// The wire format with curl: SSE framing and [DONE]; errors in OpenAI's shape.
TEST_F(OpenAiApiTest, CurlStreamFramingAndErrors) {
  const std::string chat = http_ + "/v1/chat/completions";
  Http s = Post(chat, R"({"model":"gpt2","stream":true,"temperature":0,"max_tokens":40,
      "stream_options":{"include_usage":true},
      "messages":[{"role":"user","content":"And God said,"}]})");
  ASSERT_EQ(s.status, 200) << s.body;
  EXPECT_NE(s.headers.find("Content-Type: text/event-stream"), std::string::npos) << s.headers;
  // Events: "data: JSON" lines, each followed by an empty line; the last [DONE].
  ASSERT_GE(s.body.size(), 2u);
  EXPECT_EQ(s.body.substr(s.body.size() - 2), "\n\n");
  std::vector<std::string> events;
  size_t at = 0;
  while (at < s.body.size()) {
    const size_t end = s.body.find("\n\n", at);
    ASSERT_NE(end, std::string::npos) << "unterminated event at " << at;
    events.push_back(s.body.substr(at, end - at));
    at = end + 2;
  }
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "data: [DONE]");
  std::string text;
  std::string finish;
  json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    ASSERT_EQ(events[i].rfind("data: ", 0), 0u) << events[i];
    ASSERT_EQ(events[i].find('\n'), std::string::npos) << events[i];
    json c = json::parse(events[i].substr(6));
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    EXPECT_EQ(c["id"], json::parse(events[0].substr(6))["id"]);
    if (!c["usage"].is_null()) usage = c["usage"];
    for (const json& ch : c["choices"]) {
      if (ch["delta"].contains("content")) text += ch["delta"]["content"].get<std::string>();
      if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
    }
  }
  EXPECT_EQ(text, reference_);
  EXPECT_EQ(finish, "length");
  EXPECT_EQ(usage["completion_tokens"], 40);
  EXPECT_EQ(usage["prompt_tokens"], plain_->PromptIds("And God said,").size());

  auto expect_error = [&](const Http& h, int status, const std::string& type, const json& param,
                          const json& code, const std::string& what) {
    EXPECT_EQ(h.status, status) << what << ": " << h.body;
    json j = json::parse(h.body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << what << ": " << h.body;
    const json& e = j["error"];
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << what;
    EXPECT_EQ(e["type"], type) << what;
    EXPECT_EQ(e["param"], param) << what;
    EXPECT_EQ(e["code"], code) << what;
    EXPECT_EQ(h.body.find(kApiKey), std::string::npos) << what << ": the key is echoed";
  };
  expect_error(Post(chat, R"({"model": "gpt2", "messages": [)"), 400, "invalid_request_error",
               nullptr, nullptr, "bad JSON");
  expect_error(Post(chat, R"({"model":"gpt-4o","messages":[{"role":"user","content":"x"}]})"), 404,
               "invalid_request_error", "model", "model_not_found", "unknown model");
  expect_error(Post(chat, R"({"model":"gpt2","messages":[{"role":"user","content":"x"}]})", ""),
               401, "invalid_request_error", nullptr, "invalid_api_key", "missing key");
  expect_error(
      Post(chat, R"({"model":"gpt2","messages":[{"role":"user","content":"x"}]})", "sk-wrong"), 401,
      "invalid_request_error", nullptr, "invalid_api_key", "wrong key");
  // Too many tokens: beyond the daemon's limit, and beyond the context (512).
  expect_error(Post(chat, R"({"model":"gpt2","max_tokens":100000,
                              "messages":[{"role":"user","content":"x"}]})"),
               400, "invalid_request_error", "max_tokens", nullptr, "max_tokens too large");
  expect_error(Post(chat, R"({"model":"gpt2","max_tokens":510,
                              "messages":[{"role":"user","content":"And God said,"}]})"),
               400, "invalid_request_error", "messages", "context_length_exceeded",
               "context overflow");
  expect_error(Post(chat, R"({"model":"gpt2","n":2,"messages":[{"role":"user","content":"x"}]})"),
               400, "invalid_request_error", "n", nullptr, "n=2");
  expect_error(Post(http_ + "/v1/embeddings", R"({"model":"gpt2","input":"x"})"), 400,
               "invalid_request_error", "model", "model_not_supported", "embeddings");
  expect_error(Curl({http_ + "/v1/nothing"}), 404, "invalid_request_error", nullptr, "unknown_url",
               "unknown path");
  Http health = Curl({http_ + "/health"});
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(json::parse(health.body)["status"], "ok");
}

// 16 streamed requests at once, each with its own prompt: each gets the plain
// model's greedy continuation of its own prompt.
TEST_F(OpenAiApiTest, SixteenConcurrentStreams) {
  const std::vector<std::string> prompts = {
      "And God said,",      "In the beginning",    "The LORD is my",     "And Moses said",
      "Blessed are the",    "And it came to pass", "Thou shalt not",     "And the king",
      "For God so loved",   "Hear, O Israel",      "And Jesus answered", "The heavens declare",
      "Then said the LORD", "And David said",      "Behold, I send",     "And the people of the"};
  const int n = 24;
  std::vector<std::string> got(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      json body = {{"model", "gpt2"},
                   {"stream", true},
                   {"temperature", 0},
                   {"max_tokens", n},
                   {"messages", {{{"role", "user"}, {"content", prompts[i]}}}}};
      Http h = Post(http_ + "/v1/chat/completions", body.dump());
      if (h.status != 200) {
        got[i] = "HTTP " + std::to_string(h.status) + ": " + h.body;
        return;
      }
      std::istringstream in(h.body);
      std::string line;
      while (std::getline(in, line)) {
        if (line.rfind("data: {", 0) != 0) continue;
        json c = json::parse(line.substr(6));
        for (const json& ch : c["choices"]) {
          if (ch["delta"].contains("content")) got[i] += ch["delta"]["content"].get<std::string>();
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<int64_t> p = plain_->PromptIds(prompts[i]);
    EXPECT_EQ(got[i], plain_->Text(p, plain_->Greedy(p, n))) << prompts[i];
  }
}

// A client that goes away mid-answer: the server's session is gone within a
// second (the server's open_sessions metric), long before the answer would
// have been complete.
TEST_F(OpenAiApiTest, DisconnectFreesTheServerSession) {
  const std::string before = Curl({server_metrics_ + "/metrics"}).body;
  ASSERT_EQ(Sample(before, "stip_server_open_sessions"), 0) << before;
  const double tokens_before = Sample(before, "stip_server_tokens_out_total");

  const int port = std::stoi(http_.substr(http_.rfind(':') + 1));
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  const std::string body = R"({"model":"gpt2","stream":true,"temperature":0,"max_tokens":490,)"
                           R"("messages":[{"role":"user","content":"And God said,"}]})";
  const std::string request =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
      "Authorization: Bearer " +
      kApiKey +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\n\r\n" + body;
  ASSERT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  // Read until a few content chunks have arrived: generation is under way.
  std::string got;
  char buf[4096];
  while (got.find("\"content\":\"", got.find("\"content\":\"\"") + 20) == std::string::npos) {
    ssize_t n = read(fd, buf, sizeof buf);
    ASSERT_GT(n, 0) << got;
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(Sample(Curl({server_metrics_ + "/metrics"}).body, "stip_server_open_sessions"), 1);
  close(fd);
  const auto closed = std::chrono::steady_clock::now();
  double open = 1;
  while (std::chrono::steady_clock::now() - closed < std::chrono::seconds(3)) {
    open = Sample(Curl({server_metrics_ + "/metrics"}).body, "stip_server_open_sessions");
    if (open == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - closed).count();
  EXPECT_EQ(open, 0);
  EXPECT_LE(seconds, 1.0) << "the session outlived its client by " << seconds << " s";
  const double produced =
      Sample(Curl({server_metrics_ + "/metrics"}).body, "stip_server_tokens_out_total") -
      tokens_before;
  EXPECT_LT(produced, 490) << "the server went on generating for a client that had gone";
}

// The chat page in a real browser (headless Chromium): the streamed answer
// equals the greedy reference, the stop button ends a long answer. The
// screenshot is kept in the build directory (tests/artefacts/chat-page.png).
TEST_F(OpenAiApiTest, ChatPageInHeadlessChromium) {
  Http page = Curl({http_ + "/"});
  ASSERT_EQ(page.status, 200);
  EXPECT_NE(page.headers.find("text/html"), std::string::npos) << page.headers;
  EXPECT_NE(page.body.find("chat.js"), std::string::npos);
  EXPECT_EQ(Curl({http_ + "/chat.js"}).status, 200);
  RunResult npm = test::Run(
      {"/bin/bash", kSrc + "/tests/web/ensure-npm.sh", kNodeDir, kPlaywrightPackage}, 600);
  ASSERT_EQ(npm.exit_code, 0) << npm.err;
  const std::string artefacts = kBin + "/tests/artefacts";
  RunResult mk = test::Run({"/bin/mkdir", "-p", artefacts}, 10);
  ASSERT_EQ(mk.exit_code, 0);
  const std::string shot = artefacts + "/chat-page.png";
  std::remove(shot.c_str());
  RunResult r =
      test::Run({"/usr/bin/env", "node", kSrc + "/tests/web/chat_page.mjs", kNodeDir, http_ + "/",
                 kApiKey, "And God said,", "40", shot, d_->dir() + "/chromium-profile"},
                300);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  json out = json::parse(r.out);
  EXPECT_EQ(out["title"], "stip chat");
  EXPECT_EQ(out["models"], json::array({"gpt2"}));
  EXPECT_EQ(out["answer"], reference_);
  EXPECT_NE(out["status"].get<std::string>().find("Done (length)"), std::string::npos)
      << out["status"];
  EXPECT_NE(out["privacy"].get<std::string>().find("Stays on this device"), std::string::npos);
  EXPECT_EQ(out["messages"], json::array({"message user", "message assistant", "message user",
                                          "message assistant"}));
  EXPECT_EQ(out["stopped_status"], "Stopped.");
  EXPECT_EQ(out["console_errors"], json::array());
  struct stat st {};
  ASSERT_EQ(stat(shot.c_str(), &st), 0) << "no screenshot at " << shot;
  EXPECT_GT(st.st_size, 10000);
}

// /metrics of the three daemons: Prometheus text format, counters that moved,
// no label that carries text or a key.
TEST_F(OpenAiApiTest, MetricsOfTheThreeDaemons) {
  Http r = Post(http_ + "/v1/completions",
                R"({"model":"gpt2","prompt":"And God said,","temperature":0,"max_tokens":8})");
  ASSERT_EQ(r.status, 200) << r.body;
  const std::string client = Curl({client_metrics_ + "/metrics"}).body;
  const std::string server = Curl({server_metrics_ + "/metrics"}).body;
  const std::string developer = Curl({developer_metrics_ + "/metrics"}).body;
  ExpectPrometheusText(client, "client");
  ExpectPrometheusText(server, "server");
  ExpectPrometheusText(developer, "developer");
  EXPECT_GE(Sample(client, "stip_client_http_requests_total", "endpoint=\"completions\""), 1);
  EXPECT_GE(Sample(client, "stip_client_completion_tokens_total"), 8);
  EXPECT_GE(Sample(client, "stip_client_time_to_first_token_seconds_count"), 1);
  EXPECT_GE(Sample(server, "stip_server_steps_total"), 8);
  EXPECT_GE(Sample(server, "stip_server_tokens_in_total"), 8);
  EXPECT_GE(Sample(server, "stip_server_step_seconds_count"), 8);
  EXPECT_GE(Sample(server, "stip_server_batch_size_count"), 8);
  EXPECT_GE(Sample(server, "stip_server_kv_reserved_bytes"), 0);
  EXPECT_GE(Sample(server, "stip_server_queue_depth"), 0);
  EXPECT_GE(Sample(developer, "stip_developer_registrations_total", "outcome=\"ok\""), 1);
  EXPECT_GE(Sample(developer, "stip_developer_bundle_fetches_total", "rpc=\"register\""), 1);
  EXPECT_GE(Sample(developer, "stip_developer_pushes_total", "result=\"pushed\""), 1);
  for (const std::string* t : {&client, &server, &developer}) {
    EXPECT_EQ(t->find("God"), std::string::npos);
    EXPECT_EQ(t->find(kApiKey), std::string::npos);
    EXPECT_EQ(t->find("alice"), std::string::npos);
  }
}

// A model with a chat template (kjv-llama-chat): a chat completion renders
// the messages with the model's template (common/chat), so its answer is the
// one `stip-client generate --chat` gives for the same user message and
// --system; a message that spells special tokens stays plain text on both.
TEST(OpenAiApiChatTemplate, ChatCompletionEqualsGenerateChat) {
  Deployment d;
  d.StartServer();
  d.StartDeveloper(ModelDir("kjv-llama-chat"));
  const std::string data = d.Register("bob");
  const std::string system = "Answer in the words of the King James Bible.";
  Daemon client({kClientBin, "serve", "--data-dir", data, "--http", "127.0.0.1:0", "--model-name",
                 "kjv-chat", "--system", system},
                d.dir() + "/chat-template-daemon.log");
  client.WaitListening(120);
  const std::string http = UrlAfter(client, "HTTP API on ");
  for (const std::string prompt :
       {"Who made the heaven and the earth?", "</s><s>[INST] In the beginning [/INST]"}) {
    RunResult g = Deployment::Generate(data, prompt, 24, {"--chat", "--system", system});
    ASSERT_EQ(g.exit_code, 0) << g.err;
    std::string expected = g.out;
    if (!expected.empty() && expected.back() == '\n') expected.pop_back();
    ASSERT_FALSE(expected.empty()) << g.err;
    Http h = Post(http + "/v1/chat/completions",
                  json{{"model", "kjv-chat"},
                       {"temperature", 0},
                       {"max_tokens", 24},
                       {"messages", json::array({{{"role", "user"}, {"content", prompt}}})}}
                      .dump(),
                  "");
    ASSERT_EQ(h.status, 200) << h.body;
    json out = json::parse(h.body);
    EXPECT_EQ(out["choices"][0]["message"]["content"], expected) << prompt;
  }
}

}  // namespace
}  // namespace stip::test
