// End to end: the three daemons as separate processes on loopback, with TLS
// from a demo PKI (deploy/make-demo-ca.sh), serving the demo models: the
// server's Inference port (TLS) and admin port (mutual TLS, developer only),
// signed access tokens, revocation.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/arch/architecture.h"
#include "common/auth/access_token.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/format/checkpoint.h"
#include "common/keys/model_keys.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/tls.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"
#include "stip/v1/stip.grpc.pb.h"
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
    std::vector<std::string> argv = {
        kServer,       "--listen",        listen,        "--store",          dir_ + "/store",
        "--tls-cert",  Pki("server.pem"), "--tls-key",   Pki("server.key"),  "--admin-listen",
        "127.0.0.1:0", "--admin-ca",      Pki("ca.pem"), "--admin-allow-cn", "stip-developer"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    server_ = std::make_unique<Daemon>(argv, dir_ + "/server.log");
    server_address_ = server_->WaitListening();
    admin_address_ = server_->Value("admin on ");
    EXPECT_FALSE(admin_address_.empty());
    return server_address_;
  }
  void StopServer() { server_.reset(); }
  const std::string& server_address() const { return server_address_; }
  const std::string& admin_address() const { return admin_address_; }
  Daemon& server() { return *server_; }

  std::string AddUser(const std::string& name) {
    RunResult r = test::Run({kDeveloper, "add-user", name, "--state", dir_ + "/developer"}, 60);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::string token = r.out;
    while (!token.empty() && (token.back() == '\n' || token.back() == ' ')) token.pop_back();
    return token;
  }

  std::string StartDeveloper(const std::string& model) {
    developer_ = std::make_unique<Daemon>(std::vector<std::string>{kDeveloper,
                                                                   "serve",
                                                                   "--model",
                                                                   model,
                                                                   "--state",
                                                                   dir_ + "/developer",
                                                                   "--listen",
                                                                   "127.0.0.1:0",
                                                                   "--server",
                                                                   admin_address_,
                                                                   "--public-server-address",
                                                                   server_address_,
                                                                   "--tls-cert",
                                                                   Pki("developer.pem"),
                                                                   "--tls-key",
                                                                   Pki("developer.key"),
                                                                   "--tls-ca",
                                                                   Pki("ca.pem"),
                                                                   "--access-sync-s",
                                                                   "0.5"},
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
  std::string server_address_, admin_address_, developer_address_;
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

// ---- access control ---------------------------------------------------------------

// The client's credentials with another access token.
void SetAccessToken(const std::string& data_dir, const std::string& token) {
  const std::string path = data_dir + "/credentials.json";
  nlohmann::json j = nlohmann::json::parse(ReadFile(path));
  j["access_token"] = token;
  WriteFileAtomic(path, j.dump(2) + "\n", 0600);
}

std::string AccessToken(const std::string& data_dir) {
  return nlohmann::json::parse(ReadFile(data_dir + "/credentials.json"))["access_token"];
}

std::string Sign(const auth::SigningKey& key, const std::string& user, const std::string& instance,
                 int64_t expires_in_s) {
  auth::TokenClaims c;
  c.user = user;
  c.instance = instance;
  c.token_id = auth::NewTokenId();
  c.expires_at = auth::NowUnix() + expires_in_s;
  c.issued_at = c.expires_at - 7200;
  return auth::IssueToken(key, c);
}

// The real server refuses forged, garbled, expired, wrong-instance and
// revoked tokens with the right codes before any work, and tokens appear in
// no log.
TEST(ThreePartiesTest, AccessTokensAreEnforcedByTheServer) {
  Deployment d;
  const std::string rec = d.dir() + "/recorded";
  MakeDirectories(rec, 0700);
  d.StartServer({"--record-inputs", rec});
  std::string t_alice = d.AddUser("alice"), t_bob = d.AddUser("bob");
  d.StartDeveloper(test::ModelDir("kjv-gpt2"));
  std::string alice = d.Register("alice", t_alice), bob = d.Register("bob", t_bob);
  ASSERT_EQ(Deployment::Generate(alice, "And God said,", 2).exit_code, 0);
  const size_t recorded = ListDirectory(rec).size();
  const std::string good = AccessToken(alice);
  ASSERT_EQ(good.rfind("stip1.", 0), 0u);
  const std::string instance =
      nlohmann::json::parse(ReadFile(alice + "/credentials.json"))["instance_id"];
  // The developer's key (only a test can read it: the state is the developer's).
  auth::SigningKey developer_key =
      auth::SigningKey::FromPem(ReadFile(d.dir() + "/developer/token_signing_key.pem"));
  const auth::SigningKey mallory = auth::SigningKey::Generate();
  std::string garbled = good;
  garbled[garbled.size() - 3] = garbled[garbled.size() - 3] == 'x' ? 'y' : 'x';

  struct Case {
    std::string name, token, code, needle;
  };
  const std::vector<Case> cases = {
      {"forged", Sign(mallory, "alice", instance, 3600), "UNAUTHENTICATED", "signature"},
      {"garbled", garbled, "UNAUTHENTICATED", ""},
      {"not a token", "0123456789abcdef", "UNAUTHENTICATED", "not a stip1 token"},
      {"expired", Sign(developer_key, "alice", instance, -60), "UNAUTHENTICATED", "expired"},
      {"wrong instance", Sign(developer_key, "alice", "00112233445566778899aabbccddeeff", 3600),
       "PERMISSION_DENIED", "another model instance"},
  };
  for (const Case& c : cases) {
    SetAccessToken(alice, c.token);
    RunResult r = Deployment::Generate(alice, "And God said,", 2);
    EXPECT_NE(r.exit_code, 0) << c.name;
    EXPECT_NE(r.err.find(c.code), std::string::npos) << c.name << ": " << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.name << ": " << r.err;
    EXPECT_EQ(r.err.find(c.token), std::string::npos) << c.name << ": the token was printed";
  }
  EXPECT_EQ(ListDirectory(rec).size(), recorded) << "a refused session got to run a step";
  SetAccessToken(alice, good);
  ASSERT_EQ(Deployment::Generate(alice, "And God said,", 2).exit_code, 0);

  // revoke-user: the developer pushes the token's id; the server refuses it
  // (PERMISSION_DENIED) within the sync interval; bob is unaffected.
  RunResult rv = test::Run({kDeveloper, "revoke-user", "alice", "--state", d.dir() + "/developer"});
  ASSERT_EQ(rv.exit_code, 0) << rv.err;
  RunResult r;
  for (int i = 0; i < 60; ++i) {
    r = Deployment::Generate(alice, "And God said,", 2);
    if (r.exit_code != 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_NE(r.exit_code, 0) << "the revoked token still works";
  EXPECT_NE(r.err.find("PERMISSION_DENIED"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("revoked"), std::string::npos) << r.err;
  RunResult b = Deployment::Generate(bob, "And God said,", 2);
  EXPECT_EQ(b.exit_code, 0) << b.err;
  // The registry refuses alice too.
  RunResult again = d.TryRegister("alice", t_alice, d.dir() + "/alice-again");
  EXPECT_NE(again.exit_code, 0);

  // The revocation survives a server restart (it is stored with the model).
  const std::string address = d.server_address();
  d.StopDeveloper();
  d.StopServer();
  d.StartServer({}, address);
  r = Deployment::Generate(alice, "And God said,", 2);
  EXPECT_NE(r.err.find("PERMISSION_DENIED"), std::string::npos) << r.err;
  EXPECT_EQ(Deployment::Generate(bob, "And God said,", 2).exit_code, 0);
  d.StopServer();

  // No token in any log.
  for (const char* log : {"server.log", "developer.log"}) {
    const std::string text = ReadFile(d.dir() + "/" + std::string(log));
    for (const std::string& t : {good, AccessToken(bob), t_alice, t_bob}) {
      EXPECT_EQ(text.find(t), std::string::npos) << log << " holds a token";
    }
    for (const Case& c : cases) EXPECT_EQ(text.find(c.token), std::string::npos) << log;
  }
}

grpc::Status ListModels(const std::string& address, const TlsOptions& tls) {
  auto stub = v1::ModelStore::NewStub(MakeChannel(address, tls, "test"));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListModelsResponse resp;
  return stub->List(&ctx, v1::ListModelsRequest(), &resp);
}

grpc::Status UploadDir(const std::string& address, const TlsOptions& tls, const std::string& dir,
                       const std::string& id) {
  auto stub = v1::ModelStore::NewStub(MakeChannel(address, tls, "test"));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::ModelInfo info;
  auto writer = stub->Upload(&ctx, &info);
  std::vector<OutgoingFile> files = ListFilesForTransfer(dir);
  v1::UploadRequest req;
  req.mutable_header()->set_instance_id(id);
  FillEntries(files, req.mutable_header()->mutable_files());
  if (writer->Write(req)) {
    try {
      std::string sha = StreamFiles(files, 1 << 20, [&](const v1::FileChunk& chunk) {
        v1::UploadRequest r;
        *r.mutable_chunk() = chunk;
        return writer->Write(r);
      });
      v1::UploadRequest trailer;
      trailer.mutable_trailer()->set_sha256(sha);
      writer->Write(trailer);
    } catch (const Error&) {
    }
  }
  writer->WritesDone();
  return writer->Finish();
}

// Only the developer's certificate changes the store: a TLS client without a
// client certificate, or with the client's (same CA, other name), cannot
// upload; the public port has no ModelStore; `stip-developer push` with the
// developer's certificate can.
TEST(ThreePartiesTest, OnlyTheDeveloperChangesTheModelStore) {
  Deployment d;
  d.StartServer();
  // A transformed model to push, from the developer's tools.
  const std::string out = d.dir() + "/transformed";
  RunResult t = test::Run({kDeveloper, "transform", "--model", test::ModelDir("kjv-gpt2"), "--out",
                           out, "--keys", d.dir() + "/gpt2.keys", "--quiet"},
                          300);
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const std::string server_dir = out + "/server";
  const std::string id =
      nlohmann::json::parse(ReadFile(server_dir + "/config.json"))["stip"]["instance"];
  TlsOptions no_cert;
  no_cert.ca_file = d.Pki("ca.pem");
  TlsOptions client_cert = no_cert;
  client_cert.cert_file = d.Pki("client.pem");
  client_cert.key_file = d.Pki("client.key");
  TlsOptions plain;
  plain.insecure = true;

  grpc::Status s = UploadDir(d.admin_address(), no_cert, server_dir, id);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_FALSE(ListModels(d.admin_address(), no_cert).ok());
  s = UploadDir(d.admin_address(), client_cert, server_dir, id);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_EQ(ListModels(d.admin_address(), client_cert).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  s = UploadDir(d.server_address(), no_cert, server_dir, id);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
  s = UploadDir(d.admin_address(), plain, server_dir, id);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(ListDirectory(d.dir() + "/store/models").empty());

  // The developer's own tool, with its certificate.
  RunResult push =
      test::Run({kDeveloper, "push", "--model-dir", server_dir, "--server", d.admin_address(),
                 "--tls-ca", d.Pki("ca.pem"), "--tls-cert", d.Pki("developer.pem"), "--tls-key",
                 d.Pki("developer.key"), "--state", d.dir() + "/developer"},
                120);
  ASSERT_EQ(push.exit_code, 0) << push.err;
  EXPECT_EQ(push.out.rfind("pushed instance " + id, 0), 0u) << push.out;
  TlsOptions developer = no_cert;
  developer.cert_file = d.Pki("developer.pem");
  developer.key_file = d.Pki("developer.key");
  EXPECT_TRUE(ListModels(d.admin_address(), developer).ok());
  EXPECT_EQ(ListDirectory(d.dir() + "/store/models"), std::vector<std::string>{id});
  // Without a client certificate the developer's tool is refused as well.
  RunResult anon = test::Run({kDeveloper, "push", "--model-dir", server_dir, "--server",
                              d.admin_address(), "--tls-ca", d.Pki("ca.pem")},
                             60);
  EXPECT_NE(anon.exit_code, 0);
}

TEST(Deploy, DockerComposeFileIsValid) {
  if (access("/usr/bin/docker-compose", X_OK) != 0) GTEST_SKIP() << "docker-compose not installed";
  RunResult r = test::Run(
      {"/usr/bin/docker-compose", "-f", kSrc + "/docker-compose.yml", "config", "-q"}, 60);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace stip
