// End to end: the three daemons as separate processes on loopback, with TLS
// from a demo PKI (deploy/make-demo-ca.sh), serving the demo models.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/arch/architecture.h"
#include "common/engine/causal_lm.h"
#include "common/format/checkpoint.h"
#include "common/keys/model_keys.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"
#include "tests/process_util.h"
#include "tests/test_util.h"

namespace stip {
namespace {

using test::Daemon;

using test::RunResult;

const std::string kBin = STIP_BIN_DIR;
const std::string kSrc = STIP_SOURCE_DIR;
const std::string kServer = kBin + "/server/stip-server";
const std::string kDeveloper = kBin + "/developer/stip-developer";
const std::string kClient = kBin + "/client/stip-client";

std::string ReferenceText(const std::string& model) {
  std::ifstream in(test::ModelDir(model) + "/reference.json");
  return nlohmann::json::parse(in)["greedy_text"].get<std::string>();
}

// A temporary directory with a demo PKI, removed at the end.
class Deployment {
 public:
  Deployment() {
    std::string tmpl = ::testing::TempDir() + "stip-e2e-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    dir_ = mkdtemp(buf.data());
    RunResult r = test::Run({"/bin/bash", kSrc + "/deploy/make-demo-ca.sh", dir_ + "/pki"}, 60);
    if (r.exit_code != 0) throw std::runtime_error("make-demo-ca.sh failed: " + r.err);
  }
  ~Deployment() {
    client_daemons_.clear();
    developer_.reset();
    server_.reset();
    if (!::testing::Test::HasFailure()) RemoveAll(dir_);
  }
  const std::string& dir() const { return dir_; }
  std::string Pki(const std::string& f) const { return dir_ + "/pki/" + f; }

  // Listens on a free port, or on `listen` (e.g. the previous address after a restart).
  std::string StartServer(const std::vector<std::string>& extra = {},
                          const std::string& listen = "127.0.0.1:0") {
    std::vector<std::string> argv = {kServer,           "--listen",      listen,
                                     "--store",         dir_ + "/store", "--tls-cert",
                                     Pki("server.pem"), "--tls-key",     Pki("server.key")};
    argv.insert(argv.end(), extra.begin(), extra.end());
    server_ = std::make_unique<Daemon>(argv, dir_ + "/server.log");
    server_address_ = server_->WaitListening();
    return server_address_;
  }
  void StopServer() { server_.reset(); }
  const std::string& server_address() const { return server_address_; }
  Daemon& server() { return *server_; }

  std::string AddUser(const std::string& name) {
    RunResult r = test::Run({kDeveloper, "add-user", name, "--state", dir_ + "/developer"}, 60);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::string token = r.out;
    while (!token.empty() && (token.back() == '\n' || token.back() == ' ')) token.pop_back();
    return token;
  }

  std::string StartDeveloper(const std::string& model) {
    developer_ = std::make_unique<Daemon>(
        std::vector<std::string>{kDeveloper, "serve", "--model", model, "--state",
                                 dir_ + "/developer", "--listen", "127.0.0.1:0", "--server",
                                 server_address_, "--tls-cert", Pki("developer.pem"), "--tls-key",
                                 Pki("developer.key"), "--tls-ca", Pki("ca.pem")},
        dir_ + "/developer.log");
    developer_address_ = developer_->WaitListening(180);
    return developer_address_;
  }
  void StopDeveloper() { developer_.reset(); }

  RunResult TryRegister(const std::string& user, const std::string& token,
                        const std::string& data) {
    return test::Run({kClient, "register", "--developer", developer_address_, "--user", user,
                      "--token", token, "--data-dir", data, "--ca", Pki("ca.pem")},
                     120);
  }
  std::string Register(const std::string& user, const std::string& token) {
    std::string data = dir_ + "/client-" + user;
    RunResult r = TryRegister(user, token, data);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    return data;
  }

  static RunResult Generate(const std::string& data_dir, const std::string& prompt, int n = 40) {
    return test::Run({kClient, "generate", "--data-dir", data_dir, "--prompt", prompt,
                      "--max-new-tokens", std::to_string(n), "--greedy"},
                     300);
  }

 private:
  std::string dir_;
  std::string server_address_, developer_address_;
  std::unique_ptr<Daemon> server_, developer_;
  std::vector<std::unique_ptr<Daemon>> client_daemons_;
};

class ThreeParties : public ::testing::TestWithParam<std::string> {};

// Register, then greedy 40 tokens through the three processes equal the
// Hugging Face reference text exactly.
TEST_P(ThreeParties, GreedyCompletionEqualsReference) {
  Deployment d;
  d.StartServer();
  std::string token = d.AddUser("alice");
  ASSERT_EQ(token.size(), 64u);
  d.StartDeveloper(test::ModelDir(GetParam()));
  std::string data = d.Register("alice", token);
  RunResult r = Deployment::Generate(data, "And God said,");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, ReferenceText(GetParam()) + "\n");
  // The enrolment token works once only.
  RunResult again = d.TryRegister("alice", token, d.dir() + "/again");
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.err.find("invalid or already used"), std::string::npos) << again.err;
}

INSTANTIATE_TEST_SUITE_P(DemoModels, ThreeParties, ::testing::Values("kjv-llama", "kjv-gpt2"),
                         [](const auto& info) {
                           return info.param == "kjv-llama" ? std::string("kjv_llama")
                                                            : std::string("kjv_gpt2");
                         });

// The plain engine in one process, for prompts without an HF reference.
std::string PlainCompletion(const std::string& model, const std::string& prompt, int n) {
  RunResult r = test::Run({kBin + "/tools/stip-generate", "--model", model, "--prompt", prompt,
                           "--max-new-tokens", std::to_string(n), "--greedy"},
                          300);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

TEST(ThreePartiesTest, ConcurrentClientsEachGetTheirOwnAnswer) {
  const std::string model = test::ModelDir("kjv-llama");
  Deployment d;
  d.StartServer();
  std::string t1 = d.AddUser("alice"), t2 = d.AddUser("bob");
  d.StartDeveloper(model);
  std::string a = d.Register("alice", t1), b = d.Register("bob", t2);
  const std::string p1 = "And God said,", p2 = "The LORD is my shepherd;";
  RunResult r1, r2, r3;
  std::thread th1([&] { r1 = Deployment::Generate(a, p1); });
  std::thread th2([&] { r2 = Deployment::Generate(b, p2); });
  std::thread th3([&] { r3 = Deployment::Generate(a, p2, 30); });
  th1.join();
  th2.join();
  th3.join();
  ASSERT_EQ(r1.exit_code, 0) << r1.err;
  ASSERT_EQ(r2.exit_code, 0) << r2.err;
  ASSERT_EQ(r3.exit_code, 0) << r3.err;
  EXPECT_EQ(r1.out, ReferenceText("kjv-llama") + "\n");
  EXPECT_EQ(r2.out, PlainCompletion(model, p2, 40));
  EXPECT_EQ(r3.out, PlainCompletion(model, p2, 30));
}

TEST(ThreePartiesTest, ServerRestartServesTheStoredModelWithoutUpload) {
  Deployment d;
  d.StartServer();
  std::string token = d.AddUser("alice");
  d.StartDeveloper(test::ModelDir("kjv-gpt2"));
  std::string data = d.Register("alice", token);
  ASSERT_EQ(Deployment::Generate(data, "And God said,").exit_code, 0);
  // No developer from now on: nobody could upload the model again.
  d.StopDeveloper();
  const std::string address = d.server_address();
  d.StopServer();
  d.StartServer(std::vector<std::string>{}, address);
  RunResult r = Deployment::Generate(data, "And God said,");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, ReferenceText("kjv-gpt2") + "\n");
}

// What the server stores and receives is not plaintext. The server records
// the x' it receives (--record-inputs, an audit feature that shows what the
// cloud sees); the test compares that with the plain embeddings.
TEST(ThreePartiesTest, ServerSeesNoPlaintext) {
  const std::string model = test::ModelDir("kjv-llama");
  Deployment d;
  const std::string rec = d.dir() + "/recorded";
  MakeDirectories(rec, 0700);
  d.StartServer({"--record-inputs", rec});
  std::string token = d.AddUser("alice");
  d.StartDeveloper(model);
  std::string data = d.Register("alice", token);
  ASSERT_EQ(Deployment::Generate(data, "And God said,", 4).exit_code, 0);

  // The store: no embedding table, weights differ from the plaintext ones.
  ModelConfig config = LoadModelConfig(model);
  Checkpoint plain = Checkpoint::Open(model);
  std::vector<std::string> stored = ListDirectory(d.dir() + "/store/models");
  ASSERT_EQ(stored.size(), 1u);
  Checkpoint server = Checkpoint::Open(d.dir() + "/store/models/" + stored[0]);
  EXPECT_FALSE(server.Has(TensorName(config, Role::kTokenEmbedding)));
  int compared = 0;
  for (const std::string& n : server.Names()) {
    TensorRef s = server.Get(n);
    if (s.info->shape.size() != 2 || !plain.Has(n)) continue;
    EXPECT_NE(std::memcmp(s.data, plain.Get(n).data, s.info->nbytes), 0) << n;
    ++compared;
  }
  EXPECT_GE(compared, 4 * 7);

  // What it received: x' = x[..., p], never x.
  std::vector<std::string> files = ListDirectory(rec);
  ASSERT_FALSE(files.empty());
  auto file = SafetensorsFile::Open(rec + "/" + files[0]);
  ASSERT_FALSE(file->tensors().empty());
  const TensorInfo& info = file->tensors()[0];
  at::Tensor received = LoadTensor(TensorRef{&info, file->Data(info), file.get()}).to(at::kFloat);
  auto client = ClientModel::Load(data + "/bundle");
  std::vector<int64_t> prompt = test::ToIds(test::Reference(model, "input_ids")[0]);
  at::Tensor x = client->Embed(prompt, 0);
  ASSERT_EQ(received.sizes(), x.sizes());
  EXPECT_GT(test::MaxAbsDiff(received, x), 1e-2);  // not the plain embeddings
  ClientKeys keys = LoadClientKeys(data + "/bundle/client_keys.safetensors");
  EXPECT_LE(test::MaxAbsDiff(received, PermuteHidden(x, keys.p)), 1e-6);  // but x[..., p]
}

TEST(Deploy, DockerComposeFileIsValid) {
  if (access("/usr/bin/docker-compose", X_OK) != 0) GTEST_SKIP() << "docker-compose not installed";
  RunResult r = test::Run(
      {"/usr/bin/docker-compose", "-f", kSrc + "/docker-compose.yml", "config", "-q"}, 60);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace stip
