// The server's limits, with real processes and TLS (tests/deployment.h): each
// one refuses with RESOURCE_EXHAUSTED and a message that names the limit and
// its flag, and the server goes on serving the others; a client deadline ends
// the session on the server and frees its slot; an idle session times out and
// the chat continues on a new one.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "common/rpc/tensor_wire.h"
#include "common/rpc/tls.h"
#include "common/util/files.h"
#include "stip/v1/stip.grpc.pb.h"
#include "tests/deployment.h"

namespace stip {
namespace {

using test::Deployment;
using test::Interactive;
using test::RunResult;

// One Inference.Session stream, as a client without the client library (so
// that it can send what stip-client would not).
class RawSession {
 public:
  RawSession(const Deployment& d, const test::UserCredentials& c)
      : creds_(c),
        stub_(v1::Inference::NewStub(MakeChannel(d.server_address(), d.ClientTls(), "test"))),
        stream_(stub_->Session(&ctx_)) {}

  grpc::Status Open() {
    v1::SessionRequest r;
    r.mutable_open()->set_instance_id(creds_.instance_id);
    r.mutable_open()->set_access_token(creds_.access_token);
    v1::SessionResponse resp;
    if (!stream_->Write(r) || !stream_->Read(&resp)) return Finish();
    if (!resp.has_opened()) return grpc::Status(grpc::StatusCode::UNKNOWN, "no `opened`");
    hidden_ = resp.opened().hidden_size();
    return grpc::Status::OK;
  }
  // A step of `t` positions of random x' (the server cannot tell).
  std::optional<v1::SessionResponse> Step(int64_t t) {
    v1::SessionRequest r;
    r.mutable_step()->set_step_id(++step_id_);
    r.mutable_step()->set_truncate_to(-1);
    ToWire(at::randn({t, hidden_}), r.mutable_step()->mutable_hidden());
    v1::SessionResponse resp;
    if (!stream_->Write(r) || !stream_->Read(&resp)) return std::nullopt;
    return resp;
  }
  grpc::Status Finish() {
    stream_->WritesDone();
    v1::SessionResponse ignored;
    while (stream_->Read(&ignored)) {
    }
    return stream_->Finish();
  }
  grpc::Status Close() {
    v1::SessionRequest r;
    r.mutable_close();
    stream_->Write(r);
    return Finish();
  }

 private:
  test::UserCredentials creds_;
  std::unique_ptr<v1::Inference::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::SessionRequest, v1::SessionResponse>> stream_;
  int64_t hidden_ = 0;
  uint64_t step_id_ = 0;
};

bool Contains(const std::string& s, const std::string& needle) {
  return s.find(needle) != std::string::npos;
}

void ExpectRefused(const std::optional<v1::SessionResponse>& r, const std::string& limit,
                   const std::string& flag) {
  ASSERT_TRUE(r.has_value()) << "the session ended instead of refusing the step";
  ASSERT_TRUE(r->has_error()) << r->ShortDebugString();
  EXPECT_EQ(r->error().status().code(), static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
  EXPECT_TRUE(Contains(r->error().status().message(), limit)) << r->error().status().message();
  EXPECT_TRUE(Contains(r->error().status().message(), flag)) << r->error().status().message();
}

void ExpectResult(const std::optional<v1::SessionResponse>& r, int64_t context_length) {
  ASSERT_TRUE(r.has_value()) << "the session ended";
  ASSERT_TRUE(r->has_result()) << r->ShortDebugString();
  EXPECT_EQ(r->result().context_length(), context_length);
}

// Generates a few tokens as `data_dir`'s user, trying again for a little
// while (a session's slot is given back as its stream ends).
RunResult GenerateSoon(const std::string& data_dir, int n = 4) {
  RunResult r;
  for (int i = 0; i < 40; ++i) {
    r = Deployment::Generate(data_dir, "And God said,", n);
    if (r.exit_code == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return r;
}

void SessionsPerUser(Deployment* d, const std::string& alice, const std::string& bob) {
  d->RestartServer({"--max-sessions-per-user", "1"});
  const auto alice_creds = test::LoadUserCredentials(alice);
  RawSession a(*d, alice_creds);
  ASSERT_TRUE(a.Open().ok());
  {
    RawSession again(*d, alice_creds);
    grpc::Status st = again.Open();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_TRUE(Contains(st.error_message(), "per-user session limit of 1")) << st.error_message();
    EXPECT_TRUE(Contains(st.error_message(), "--max-sessions-per-user")) << st.error_message();
  }
  RunResult refused = Deployment::Generate(alice, "And God said,", 4);
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_TRUE(Contains(refused.err, "RESOURCE_EXHAUSTED")) << refused.err;
  EXPECT_TRUE(Contains(refused.err, "--max-sessions-per-user")) << refused.err;
  // Others are served meanwhile, and alice's session works.
  RunResult served = Deployment::Generate(bob, "And God said,", 4);
  EXPECT_EQ(served.exit_code, 0) << served.err;
  ExpectResult(a.Step(3), 3);
  EXPECT_TRUE(a.Close().ok());
  RunResult after = GenerateSoon(alice);
  EXPECT_EQ(after.exit_code, 0) << after.err;
}

void MessageSize(Deployment* d, const std::string& alice, const std::string& bob) {
  d->RestartServer({"--max-message-bytes", "64KiB"});
  RawSession a(*d, test::LoadUserCredentials(alice));
  ASSERT_TRUE(a.Open().ok());
  // 100 positions x 256 x 4 bytes: beyond 64 KiB; refused in-band, the session goes on.
  ExpectRefused(a.Step(100), "message size limit of 65536 bytes", "--max-message-bytes");
  ExpectResult(a.Step(4), 4);
  EXPECT_TRUE(a.Close().ok());
  // The client's prefill of a long prompt is refused with the same words.
  std::string prompt;
  for (int i = 0; i < 12; ++i) prompt += "And God said, Let there be light: and there was light. ";
  RunResult r = Deployment::Generate(alice, prompt, 2);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(Contains(r.err, "RESOURCE_EXHAUSTED")) << r.err;
  EXPECT_TRUE(Contains(r.err, "--max-message-bytes")) << r.err;
  RunResult ok = Deployment::Generate(bob, "And God said,", 4);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

// Bytes of KV cache per position of the demo llama (K and V, fp32).
int64_t LlamaCacheBytesPerPosition() {
  nlohmann::json c = nlohmann::json::parse(ReadFile(test::ModelDir("kjv-llama") + "/config.json"));
  return int64_t{2} * c["num_hidden_layers"].get<int64_t>() *
         c["num_key_value_heads"].get<int64_t>() * c["head_dim"].get<int64_t>() * 4;
}

void ContextKvMemoryAndSessions(Deployment* d, const std::string& alice, const std::string& bob) {
  // KV room for one session's first 16 positions (the cache's smallest
  // allocation) and a half, two sessions, 16 positions each.
  const double kv_gib =
      static_cast<double>(LlamaCacheBytesPerPosition() * 24) / static_cast<double>(1 << 30);
  char kv[32];
  std::snprintf(kv, sizeof kv, "%.12f", kv_gib);
  d->RestartServer({"--max-context", "16", "--max-kv-gib", kv, "--max-sessions", "2"});
  const auto alice_creds = test::LoadUserCredentials(alice);
  RawSession a(*d, alice_creds), b(*d, alice_creds);
  ASSERT_TRUE(a.Open().ok());
  ExpectRefused(a.Step(17), "context limit of 16 positions", "--max-context");
  ExpectResult(a.Step(4), 4);
  ASSERT_TRUE(b.Open().ok());
  ExpectRefused(b.Step(4), "KV cache memory limit", "--max-kv-gib");
  {
    RawSession c(*d, test::LoadUserCredentials(bob));
    grpc::Status st = c.Open();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_TRUE(Contains(st.error_message(), "session limit of 2")) << st.error_message();
    EXPECT_TRUE(Contains(st.error_message(), "--max-sessions")) << st.error_message();
  }
  ExpectResult(a.Step(1), 5);  // the refusals changed nothing
  EXPECT_TRUE(a.Close().ok());
  ExpectResult(b.Step(4), 4);  // a's memory is free again
  EXPECT_TRUE(b.Close().ok());
  RunResult r = GenerateSoon(bob);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// A client deadline that passes in the middle of a generation: the client
// says so (and does not reconnect), the server ends the session and gives its
// slot back (--max-sessions 1: the next client gets it).
void ClientDeadlineEndsTheSessionOnTheServer(Deployment* d, const std::string& alice,
                                             const std::string& bob) {
  d->RestartServer({"--max-sessions", "1"});
  RunResult r =
      Deployment::Generate(alice, "And God said,", 500, {"--ignore-eos", "--timeout-s", "0.5"});
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_GT(r.out.size(), std::string("And God said,").size()) << "not in the middle: " << r.err;
  EXPECT_TRUE(Contains(r.err, "deadline of the request passed during step")) << r.err;
  EXPECT_FALSE(Contains(r.err, "reconnect")) << r.err;
  RunResult next = GenerateSoon(bob);
  EXPECT_EQ(next.exit_code, 0) << next.err;
}

bool AnsweredTurns(const std::string& out, int turns) {
  int prompts = 0;
  for (size_t at = out.find("> "); at != std::string::npos; at = out.find("> ", at + 2)) {
    if (at == 0 || out[at - 1] == '\n') ++prompts;
  }
  return prompts >= turns + 1;
}

// The server ends a session idle for longer than --idle-timeout-s; the next
// turn of the chat opens a new one at once and answers as if nothing happened.
void IdleSessionTimesOutAndTheChatContinues(Deployment* d, const std::string& alice) {
  d->RestartServer({"--idle-timeout-s", "1"});
  auto chat = [&](double pause_s) {
    Interactive c(
        {test::kClientBin, "chat", "--data-dir", alice, "--greedy", "--max-new-tokens", "12"});
    c.Write("And God said,\n");
    EXPECT_TRUE(c.ReadUntil(
        [](const std::string& o, const std::string&) { return AnsweredTurns(o, 1); }, 60))
        << c.err;
    std::this_thread::sleep_for(std::chrono::duration<double>(pause_s));
    c.Write("And Moses said\n");
    EXPECT_TRUE(c.ReadUntil(
        [](const std::string& o, const std::string&) { return AnsweredTurns(o, 2); }, 60))
        << c.err;
    c.CloseStdin();
    EXPECT_EQ(c.Wait(30), 0) << c.err;
    return std::make_pair(c.out, c.err);
  };
  auto quick = chat(0);
  auto idle = chat(2.5);
  EXPECT_EQ(idle.first, quick.first);
  EXPECT_TRUE(Contains(idle.second, "session expired")) << idle.second;
  EXPECT_TRUE(Contains(idle.second, "reconnected")) << idle.second;
  EXPECT_FALSE(Contains(quick.second, "reconnect")) << quick.second;
}

// One deployment for all (setting it up is most of the time); the server is
// restarted with the flags of each part.
class LimitsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    d_ = new Deployment();
    std::vector<std::string> data = d_->Setup(test::ModelDir("kjv-llama"), {"alice", "bob"});
    alice_ = new std::string(data[0]);
    bob_ = new std::string(data[1]);
  }
  static void TearDownTestSuite() {
    delete d_;
    delete alice_;
    delete bob_;
  }
  static Deployment* d_;
  static std::string *alice_, *bob_;
};

Deployment* LimitsTest::d_ = nullptr;
std::string* LimitsTest::alice_ = nullptr;
std::string* LimitsTest::bob_ = nullptr;

TEST_F(LimitsTest, EachLimitIsResourceExhaustedNamingItsFlagAndOthersAreServed) {
  {
    SCOPED_TRACE("--max-sessions-per-user");
    SessionsPerUser(d_, *alice_, *bob_);
  }
  {
    SCOPED_TRACE("--max-message-bytes");
    MessageSize(d_, *alice_, *bob_);
  }
  {
    SCOPED_TRACE("--max-context, --max-kv-gib, --max-sessions");
    ContextKvMemoryAndSessions(d_, *alice_, *bob_);
  }
}

TEST_F(LimitsTest, DeadlinesAndIdleTimeoutsEndSessionsCleanly) {
  {
    SCOPED_TRACE("client deadline");
    ClientDeadlineEndsTheSessionOnTheServer(d_, *alice_, *bob_);
  }
  {
    SCOPED_TRACE("--idle-timeout-s");
    IdleSessionTimesOutAndTheChatContinues(d_, *alice_);
  }
}

}  // namespace
}  // namespace stip
