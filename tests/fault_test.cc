// Faults, with real processes and TLS (tests/deployment.h): the server killed
// with SIGKILL in the middle of an upload, of a generation and of a chat. The
// store shows no partial model and the upload can be repeated; the client says
// plainly that the server went away, reconnects with backoff, sends the
// conversation again and ends with the same greedy text as without the fault.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/tls.h"
#include "common/util/files.h"
#include "stip/v1/stip.grpc.pb.h"
#include "tests/deployment.h"
#include "tests/model_store_client.h"

namespace stip {
namespace {

using test::Deployment;
using test::Interactive;
using test::RunResult;

using test::HasTempEntry;

grpc::Status ListModels(const std::string& admin, const TlsOptions& tls,
                        v1::ListModelsResponse* resp) {
  return test::ListModels(MakeChannel(admin, tls, "test"), resp);
}

// The server is killed (SIGKILL) while it receives a model: the temporary
// directory is left on disk, but after a restart on the same store no model
// is listed, nothing partial is left, and the same upload succeeds.
TEST(FaultTest, ServerKilledDuringUploadShowsNoPartialModelAndTheUploadCanBeRepeated) {
  Deployment d;
  d.StartServer();
  const std::string out = d.dir() + "/transformed";
  RunResult t = test::Run({test::kDeveloperBin, "transform", "--model", test::ModelDir("kjv-gpt2"),
                           "--out", out, "--keys", d.dir() + "/gpt2.keys", "--quiet"},
                          300);
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const std::string server_dir = out + "/server";
  const std::string id =
      nlohmann::json::parse(ReadFile(server_dir + "/config.json"))["stip"]["instance"];
  const std::string models_dir = d.store() + "/models";

  // An upload with the developer's certificate that stops after a few chunks
  // of a much larger model: then the server dies.
  {
    test::UploadPlan plan = test::PlanFor(server_dir, id);
    bool killed = false;
    plan.interrupt = [&](int index, grpc::ClientContext&) {
      if (index != 20) return false;
      for (int i = 0; i < 500 && !HasTempEntry(models_dir); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      EXPECT_TRUE(HasTempEntry(models_dir)) << "the server never started receiving";
      d.KillServer();
      killed = true;
      return true;
    };
    grpc::Status s = test::Upload(MakeChannel(d.admin_address(), d.DeveloperTls(), "test"), plan);
    ASSERT_TRUE(killed);
    EXPECT_FALSE(s.ok());
  }
  EXPECT_TRUE(HasTempEntry(models_dir)) << "SIGKILL cleaned up? then this test tests nothing";

  d.StartServer();  // same store
  v1::ListModelsResponse list;
  grpc::Status s = ListModels(d.admin_address(), d.DeveloperTls(), &list);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(list.models_size(), 0);
  EXPECT_TRUE(ListDirectory(models_dir).empty()) << "a partial upload was left in the store";

  RunResult push = test::Run(
      {test::kDeveloperBin, "push", "--model-dir", server_dir, "--server", d.admin_address(),
       "--tls-ca", d.Pki("ca.pem"), "--tls-cert", d.Pki("developer.pem"), "--tls-key",
       d.Pki("developer.key"), "--state", d.dir() + "/developer"},
      120);
  ASSERT_EQ(push.exit_code, 0) << push.err;
  s = ListModels(d.admin_address(), d.DeveloperTls(), &list);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).instance_id(), id);
  EXPECT_TRUE(list.models(0).loaded());
  EXPECT_EQ(ListDirectory(models_dir), std::vector<std::string>{id});
}

const std::vector<std::string> kFastReconnect = {"--reconnect-initial-delay-s", "0.2",
                                                 "--reconnect-max-delay-s",     "1",
                                                 "--reconnect-attempts",        "40"};

// The server is frozen in the middle of an answer and killed, then started
// again: the client reports it, reconnects, sends prompt + the tokens it has
// so far, and prints exactly the plain engine's greedy completion.
TEST(FaultTest, ServerKilledDuringGenerateTheClientReconnectsOrGivesUpPlainly) {
  const std::string model = test::ModelDir("kjv-llama");
  const std::string prompt = "And God said,";
  const int n = 200;
  const std::string want = test::PlainCompletion(model, prompt, n);
  Deployment d;
  const std::string alice = d.Setup(model, {"alice"})[0];

  Interactive client(Deployment::GenerateArgs(alice, prompt, n, kFastReconnect));
  ASSERT_TRUE(client.ReadUntil(
      [&](const std::string& out, const std::string&) { return out.size() >= prompt.size() + 20; },
      120))
      << client.err;
  d.server().Signal(SIGSTOP);  // no further step is answered from here on
  const size_t shown = client.out.size();
  d.KillServer();
  d.RestartServer();
  ASSERT_EQ(client.Wait(120), 0) << client.err;
  EXPECT_LT(shown, want.size()) << "the answer was complete before the server was killed";
  EXPECT_EQ(client.out, want);
  EXPECT_NE(client.err.find("server unavailable"), std::string::npos) << client.err;
  EXPECT_NE(client.err.find("reconnecting in"), std::string::npos) << client.err;
  EXPECT_NE(client.err.find("reconnected"), std::string::npos) << client.err;

  // When the server does not come back, the client gives up after its
  // attempts with a plain error that says so.
  Interactive again(
      Deployment::GenerateArgs(alice, prompt, n,
                               {"--reconnect-initial-delay-s", "0.05", "--reconnect-max-delay-s",
                                "0.1", "--reconnect-attempts", "3"}));
  ASSERT_TRUE(again.ReadUntil(
      [&](const std::string& out, const std::string&) { return out.size() >= prompt.size() + 20; },
      120))
      << again.err;
  d.server().Signal(SIGSTOP);
  d.KillServer();
  EXPECT_EQ(again.Wait(60), 2) << again.err;
  EXPECT_NE(again.err.find("attempt 3 of 3"), std::string::npos) << again.err;
  EXPECT_NE(again.err.find("gave up after 3 reconnect attempts"), std::string::npos) << again.err;
}

// `stip-client chat` with the given input lines; returns when every answer is
// printed (the prompt "> " came back after each) and the chat has exited.
struct ChatRun {
  std::string out, err;
  int exit_code = -1;
};

bool AnsweredTurns(const std::string& out, int turns) {
  // "> " before every turn and once more after the last answer.
  int prompts = 0;
  for (size_t at = out.find("> "); at != std::string::npos; at = out.find("> ", at + 2)) {
    if (at == 0 || out[at - 1] == '\n') ++prompts;
  }
  return prompts >= turns + 1;
}

// The server is killed between two turns of a chat and started again; the
// second turn reconnects, sends the conversation again and answers exactly
// as a chat that was never interrupted.
TEST(FaultTest, ServerKilledDuringChatTheConversationContinues) {
  const std::string model = test::ModelDir("kjv-gpt2");
  Deployment d;
  const std::string alice = d.Setup(model, {"alice"})[0];
  std::vector<std::string> argv = {test::kClientBin,   "chat", "--data-dir", alice, "--greedy",
                                   "--max-new-tokens", "16"};
  argv.insert(argv.end(), kFastReconnect.begin(), kFastReconnect.end());
  const std::vector<std::string> turns = {"And God said,", "And Moses said unto the LORD",
                                          "Blessed are"};

  auto chat = [&](bool kill_after_first) {
    Interactive c(argv);
    for (size_t i = 0; i < turns.size(); ++i) {
      if (i == 1 && kill_after_first) {
        d.KillServer();
        d.RestartServer();
      }
      c.Write(turns[i] + "\n");
      EXPECT_TRUE(c.ReadUntil(
          [&](const std::string& out, const std::string&) { return AnsweredTurns(out, i + 1); },
          120))
          << "turn " << i << ": " << c.out << "\n"
          << c.err;
    }
    c.CloseStdin();
    ChatRun r;
    r.exit_code = c.Wait(60);
    r.out = c.out;
    r.err = c.err;
    return r;
  };
  ChatRun plain = chat(false);
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_EQ(plain.err.find("reconnect"), std::string::npos) << plain.err;
  ChatRun faulted = chat(true);
  ASSERT_EQ(faulted.exit_code, 0) << faulted.err;
  EXPECT_EQ(faulted.out, plain.out);
  EXPECT_NE(faulted.err.find("server unavailable"), std::string::npos) << faulted.err;
  EXPECT_NE(faulted.err.find("reconnected"), std::string::npos) << faulted.err;
  // The first answer is the beginning of the Hugging Face reference's.
  const std::string ref = test::ReferenceText("kjv-gpt2").substr(turns[0].size());
  ASSERT_EQ(plain.out.rfind("> ", 0), 0u) << plain.out;
  const std::string first = plain.out.substr(2, plain.out.find('\n') - 2);
  EXPECT_GT(first.size(), 10u);
  EXPECT_EQ(ref.rfind(first, 0), 0u) << first << " | " << ref;
}

}  // namespace
}  // namespace stip
