// End to end: the three daemons as separate processes on loopback, with TLS
// from a demo PKI (deploy/make-demo-ca.sh), serving the demo models: the
// server's Inference port (TLS) and admin port (mutual TLS, developer only),
// signed access tokens, revocation.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/arch/architecture.h"
#include "common/auth/access_token.h"
#include "common/client/client_permuter.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/format/checkpoint.h"
#include "common/keys/model_keys.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/tls.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"
#include "stip/v1/stip.grpc.pb.h"
#include "tests/deployment.h"
#include "tests/model_store_client.h"
#include "tests/process_util.h"
#include "tests/test_util.h"

namespace stip {
namespace {

using test::Daemon;

using test::RunResult;

using test::Deployment;
using test::ReferenceText;
const std::string& kBin = test::kBin;
const std::string& kSrc = test::kSrc;
const std::string& kDeveloper = test::kDeveloperBin;
const std::string& kClient = test::kClientBin;

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
  // Only the 8 largest logits per token on the wire: still exactly the reference.
  r = Deployment::Generate(data, "And God said,", 40, {"--logits", "top-k:8"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, ReferenceText(GetParam()) + "\n");
  // Sampling that a top-k format cannot keep exact is refused before connecting.
  r = test::Run({kClient, "generate", "--data-dir", data, "--prompt", "And", "--temperature", "0.7",
                 "--logits", "top-k:8"},
                60);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("sampling is exact only with top_k in 1..7"), std::string::npos) << r.err;
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
  for (const std::string& log : d.Logs()) {
    const std::string text = ReadFile(log);
    for (const std::string& t : {good, AccessToken(bob), t_alice, t_bob}) {
      EXPECT_EQ(text.find(t), std::string::npos) << log << " holds a token";
    }
    for (const Case& c : cases) EXPECT_EQ(text.find(c.token), std::string::npos) << log;
  }
}

grpc::Status ListModels(const std::string& address, const TlsOptions& tls) {
  return test::ListModels(MakeChannel(address, tls, "test"));
}

// An upload of `dir` (not loaded) to `address` with `tls`.
grpc::Status UploadDir(const std::string& address, const TlsOptions& tls, const std::string& dir,
                       const std::string& id) {
  test::UploadPlan plan = test::PlanFor(dir, id);
  plan.load = false;
  plan.chunk_bytes = 1 << 20;
  return test::Upload(MakeChannel(address, tls, "test"), plan);
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

// ---- key rotation, instance groups, token renewal, restarts, secrets on disk ----------

nlohmann::json Credentials(const std::string& data_dir) {
  return nlohmann::json::parse(ReadFile(data_dir + "/credentials.json"));
}

std::string InstanceOf(const std::string& data_dir) {
  return Credentials(data_dir)["instance_id"].get<std::string>();
}

// The server's store as the developer sees it (ModelStore.List on the admin port).
std::map<std::string, v1::ModelInfo> StoredModels(const Deployment& d) {
  std::map<std::string, v1::ModelInfo> out;
  for (const v1::ModelInfo& m :
       test::Models(MakeChannel(d.admin_address(), d.DeveloperTls(), "test"))) {
    out[m.instance_id()] = m;
  }
  return out;
}

// Polls `done` every 100 ms for up to `seconds`.
bool Eventually(const std::function<bool()>& done, double seconds) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

// One turn of a conversation through a client daemon's Chat service.
std::string ChatTurn(const std::string& address, const std::string& conversation,
                     const std::string& prompt, int n) {
  TlsOptions plain;
  plain.insecure = true;
  auto stub = v1::Chat::NewStub(MakeChannel(address, plain, "test"));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  v1::GenerateRequest req;
  req.set_prompt(prompt);
  req.set_max_new_tokens(n);
  req.set_conversation_id(conversation);
  req.mutable_sampling()->set_greedy(true);
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse resp;
  std::string text;
  while (reader->Read(&resp)) text += resp.text();
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << conversation << ": " << s.error_message();
  return text;
}

void SleepUntilUnix(int64_t t) {
  while (auth::NowUnix() < t) std::this_thread::sleep_for(std::chrono::milliseconds(100));
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return !needle.empty() && haystack.find(needle) != std::string::npos;
}

// Secrets on disk after an end-to-end run: key files, token keys, credentials
// and client bundles are 0600 in 0700 directories (the developer's state,
// the clients' data directories; the server's store is 0700 too), and the
// server's store holds no key material -- no key file, no private key, no
// access token, not the bytes of any permutation p or p_c of the developer's
// instances (those of `extra_keys` too, e.g. of rotated-out instances) -- and
// the daemons run without core dumps.
void ExpectSecretsPrivate(Deployment& d, const std::vector<std::string>& data_dirs,
                          const std::vector<std::string>& extra_keys = {}) {
  SCOPED_TRACE("secrets on disk");
  auto walk = [](const std::string& root, bool all_files_private) {
    std::vector<std::string> dirs = {root};
    int files = 0;
    while (!dirs.empty()) {
      const std::string dir = dirs.back();
      dirs.pop_back();
      struct stat st;
      ASSERT_EQ(lstat(dir.c_str(), &st), 0) << dir;
      EXPECT_EQ(st.st_mode & 0777, 0700u) << dir;
      for (const std::string& name : ListDirectory(dir)) {
        const std::string path = dir + "/" + name;
        ASSERT_EQ(lstat(path.c_str(), &st), 0) << path;
        if (S_ISDIR(st.st_mode)) {
          dirs.push_back(path);
          continue;
        }
        EXPECT_TRUE(S_ISREG(st.st_mode)) << path << " is not a plain file";
        ++files;
        const bool secret = all_files_private || name.find("key") != std::string::npos ||
                            name == "access.json" || name == "retired.json";
        if (secret) {
          EXPECT_EQ(st.st_mode & 0777, 0600u) << path;
        }
        EXPECT_EQ(st.st_mode & 0022, 0u) << path << " is writable by others";
      }
    }
    EXPECT_GT(files, 0) << root;
  };
  walk(d.state_dir(), /*all_files_private=*/false);
  // In the state, every instance's keys and client bundle are secret.
  for (const std::string& id : ListDirectory(d.state_dir() + "/instances")) {
    walk(d.state_dir() + "/instances/" + id + "/client", /*all_files_private=*/true);
  }
  for (const std::string& data : data_dirs) walk(data, /*all_files_private=*/true);
  walk(d.dir() + "/store", /*all_files_private=*/false);

  // Key material of every instance the developer has (and had).
  std::vector<std::string> needles = extra_keys;
  for (const std::string& id : ListDirectory(d.state_dir() + "/instances")) {
    ModelKeys keys = LoadKeys(d.state_dir() + "/instances/" + id + "/keys.safetensors");
    for (const Permutation* p : {&keys.p, &keys.p_c}) {
      const size_t n = std::min<size_t>(p->size(), 64);
      needles.push_back(std::string(reinterpret_cast<const char*>(p->data()), n * sizeof(int64_t)));
      std::vector<int32_t> narrow(p->begin(), p->begin() + n);
      needles.push_back(
          std::string(reinterpret_cast<const char*>(narrow.data()), n * sizeof(int32_t)));
    }
  }
  for (const std::string& data : data_dirs) needles.push_back(AccessToken(data));
  needles.push_back(ReadFile(d.state_dir() + "/token_signing_key.pem"));
  ASSERT_GE(needles.size(), 5u);
  std::vector<std::string> dirs = {d.dir() + "/store"};
  int scanned = 0;
  while (!dirs.empty()) {
    const std::string dir = dirs.back();
    dirs.pop_back();
    for (const std::string& name : ListDirectory(dir)) {
      const std::string path = dir + "/" + name;
      if (IsDirectory(path)) {
        dirs.push_back(path);
        continue;
      }
      EXPECT_EQ(name.find("key"), std::string::npos)
          << "a key file in the server's store: " << path;
      const std::string content = ReadFile(path);
      EXPECT_FALSE(Contains(content, "PRIVATE KEY")) << path;
      for (size_t i = 0; i < needles.size(); ++i) {
        EXPECT_FALSE(Contains(content, needles[i])) << path << " holds secret #" << i;
      }
      ++scanned;
    }
  }
  EXPECT_GT(scanned, 0);

  // No core dumps from the daemons that hold keys and tokens.
  std::vector<pid_t> pids = {d.server().pid(), d.developer().pid()};
  for (size_t i = 0; i < d.chat_daemons(); ++i) pids.push_back(d.chat_daemon(i).pid());
  for (const pid_t pid : pids) {
    const std::string limits = ReadFile("/proc/" + std::to_string(pid) + "/limits");
    std::istringstream in(limits);
    std::string line;
    bool seen = false;
    while (std::getline(in, line)) {
      if (line.rfind("Max core file size", 0) != 0) continue;
      seen = true;
      std::istringstream fields(line.substr(18));
      std::string soft, hard;
      fields >> soft >> hard;
      EXPECT_EQ(soft, "0") << "pid " << pid << ": " << line;
    }
    EXPECT_TRUE(seen) << limits;
  }
}

// `stip-developer rotate`: fresh keys for the default group and for bob's
// exclusive instance while users are registered and a conversation is open.
// The open session drains on the old instance; new sessions are refused as
// retired, and the clients fetch their new bundles on their own; outputs
// still equal the plain model's; the old instances disappear from the
// server's store and the developer's state; old tokens are refused.
TEST(RotationTest, RotateMovesUsersToFreshKeysAndRetiresTheOldInstances) {
  const std::string model = test::ModelDir("kjv-gpt2");
  Deployment d;
  d.StartServer();
  const std::string t_alice = d.AddUser("alice");
  RunResult bob_add = test::Run(
      {kDeveloper, "add-user", "bob", "--exclusive", "--state", d.state_dir(), "--model", model},
      120);
  ASSERT_EQ(bob_add.exit_code, 0) << bob_add.err;
  const std::string t_bob = bob_add.out.substr(0, bob_add.out.find('\n'));
  d.StartDeveloper(model);
  const std::string alice = d.Register("alice", t_alice), bob = d.Register("bob", t_bob);
  const std::string a0 = InstanceOf(alice), b0 = InstanceOf(bob);
  EXPECT_NE(a0, b0) << "bob's instance is not his own";
  const std::string reference = ReferenceText("kjv-gpt2") + "\n";
  RunResult r = Deployment::Generate(bob, "And God said,");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, reference);
  const std::string old_token = AccessToken(alice);
  std::string old_keys = ReadFile(d.state_dir() + "/instances/" + a0 + "/keys.safetensors");

  // A conversation open on the old instance.
  const std::string chat = d.StartChatDaemon(alice);
  const std::vector<std::string> prompts = {"And God said,", " And Moses", " And the LORD"};
  std::vector<std::string> before(3);
  before[0] = ChatTurn(chat, "c1", prompts[0], 12);

  RunResult rot = test::Run(
      {kDeveloper, "rotate", "--state", d.state_dir(), "--all", "--drain-seconds", "4"}, 300);
  ASSERT_EQ(rot.exit_code, 0) << rot.err;
  EXPECT_NE(rot.out.find("group default: instance " + a0 + " -> "), std::string::npos) << rot.out;
  EXPECT_NE(rot.out.find("group user:bob: instance " + b0 + " -> "), std::string::npos) << rot.out;
  EXPECT_NE(rot.out.find("draining"), std::string::npos) << rot.out;
  // The open session goes on on the old instance while it drains.
  before[1] = ChatTurn(chat, "c1", prompts[1], 10);
  std::map<std::string, v1::ModelInfo> stored = StoredModels(d);
  ASSERT_TRUE(stored.count(a0));
  EXPECT_TRUE(stored[a0].retired());

  // New sessions: refused as retired, the clients fetch their new bundles.
  r = Deployment::Generate(alice, "And God said,");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, reference);
  const std::string a1 = InstanceOf(alice);
  EXPECT_NE(a1, a0);
  EXPECT_NE(AccessToken(alice), old_token);
  r = Deployment::Generate(bob, "And God said,");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, reference);
  const std::string b1 = InstanceOf(bob);
  EXPECT_NE(b1, b0);
  EXPECT_NE(b1, a1);

  // The old instances go: from the server once drained, then from the state.
  EXPECT_TRUE(Eventually(
      [&] {
        std::map<std::string, v1::ModelInfo> now = StoredModels(d);
        return !now.count(a0) && !now.count(b0) && now.count(a1) && now.count(b1);
      },
      30))
      << "the retired instances are still stored";
  EXPECT_TRUE(Eventually(
      [&] {
        return !IsDirectory(d.state_dir() + "/instances/" + a0) &&
               !IsDirectory(d.state_dir() + "/instances/" + b0);
      },
      10))
      << "the retired instances' keys are still in the state";
  RunResult li = test::Run({kDeveloper, "list-instances", "--state", d.state_dir()}, 60);
  EXPECT_NE(li.out.find(a1 + "\tgpt2\tserves:default"), std::string::npos) << li.out;
  EXPECT_NE(li.out.find(b1 + "\tgpt2\tserves:user:bob"), std::string::npos) << li.out;

  // The conversation goes on, transparently, on the new instance: the same
  // text as a conversation held entirely after the rotation.
  before[2] = ChatTurn(chat, "c1", prompts[2], 10);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(ChatTurn(chat, "c2", prompts[i], i == 0 ? 12 : 10), before[i]) << "turn " << i;
  }

  // The old token: refused by the server and by the registry.
  const std::string new_token = AccessToken(alice);
  SetAccessToken(alice, old_token);
  r = Deployment::Generate(alice, "And God said,", 2);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("PERMISSION_DENIED"), std::string::npos) << r.err;
  RunResult f = test::Run({kClient, "fetch", "--data-dir", alice}, 60);
  EXPECT_NE(f.exit_code, 0);
  EXPECT_NE(f.err.find("PERMISSION_DENIED"), std::string::npos) << f.err;
  SetAccessToken(alice, new_token);

  ExpectSecretsPrivate(d, {alice, bob}, {old_keys.substr(old_keys.size() - 256)});
  for (const std::string& log : d.Logs()) {
    const std::string text = ReadFile(log);
    for (const std::string& t : {old_token, new_token, AccessToken(bob), t_alice, t_bob}) {
      EXPECT_FALSE(Contains(text, t)) << log << " holds a token";
    }
  }
}

// The developer restarts: its users, keys and instances are still there (no
// new transform, no new upload; tokens issued before still work, users added
// while it was down register). Tokens renew before they expire; an expired
// one is refused with a message that says what to do.
TEST(RotationTest, DeveloperRestartKeepsUsersKeysAndInstancesAndTokensRenew) {
  const std::string model = test::ModelDir("kjv-gpt2");
  const std::string reference = ReferenceText("kjv-gpt2") + "\n";
  Deployment d;
  d.StartServer();
  const std::string t_alice = d.AddUser("alice");
  d.StartDeveloper(model);
  const std::string alice = d.Register("alice", t_alice);
  ASSERT_EQ(Deployment::Generate(alice, "And God said,", 4).exit_code, 0);
  const std::vector<std::string> instances = ListDirectory(d.state_dir() + "/instances");
  const std::string key = ReadFile(d.state_dir() + "/token_signing_key.pem");
  const std::string key_id = StoredModels(d).begin()->second.token_key_id();

  const std::string registry = d.developer_address();
  d.StopDeveloper();
  const std::string t_carol = d.AddUser("carol"), t_dave = d.AddUser("dave");
  d.StartDeveloper(model, {"--token-ttl-hours", std::to_string(10.0 / 3600)}, registry);
  const std::string log = ReadFile(d.developer().log_path());
  EXPECT_NE(log.find("using instance " + instances.at(0)), std::string::npos) << log;
  EXPECT_EQ(log.find("made instance"), std::string::npos) << log;
  EXPECT_NE(log.find("already has instance"), std::string::npos) << log;
  EXPECT_EQ(ListDirectory(d.state_dir() + "/instances"), instances);
  EXPECT_EQ(ReadFile(d.state_dir() + "/token_signing_key.pem"), key);
  EXPECT_EQ(StoredModels(d).begin()->second.token_key_id(), key_id);
  RunResult users = test::Run({kDeveloper, "list-users", "--state", d.state_dir()}, 60);
  EXPECT_NE(users.out.find("alice\tenrolled"), std::string::npos) << users.out;
  EXPECT_NE(users.out.find("carol\tpending"), std::string::npos) << users.out;

  // alice's token from before the restart: the server and the registry take it.
  RunResult r = Deployment::Generate(alice, "And God said,");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, reference);
  RunResult f = test::Run({kClient, "fetch", "--data-dir", alice}, 60);
  EXPECT_EQ(f.exit_code, 0) << f.err;

  // 10 s tokens: dave renews his after half its lifetime; carol's has expired.
  const std::string carol = d.Register("carol", t_carol), dave = d.Register("dave", t_dave);
  std::optional<auth::TokenClaims> dave0 = auth::ReadClaimsUnverified(AccessToken(dave));
  std::optional<auth::TokenClaims> carol0 = auth::ReadClaimsUnverified(AccessToken(carol));
  ASSERT_TRUE(dave0 && carol0);
  ASSERT_EQ(dave0->expires_at - dave0->issued_at, 10);
  // carol's token as it will be once expired (the same token id, signed by
  // the developer's key, which only a test can read), instead of waiting.
  auth::TokenClaims expired = *carol0;
  expired.issued_at -= 100;
  expired.expires_at = auth::NowUnix() - 1;
  SetAccessToken(carol, auth::IssueToken(auth::SigningKey::FromPem(key), expired));
  r = Deployment::Generate(carol, "And God said,", 2);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("expired"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("stip-developer add-user carol --reissue"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "") << "nothing is printed for a refused session";

  SleepUntilUnix(dave0->issued_at + 5);
  r = Deployment::Generate(dave, "And God said,");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, reference);
  std::optional<auth::TokenClaims> dave1 = auth::ReadClaimsUnverified(AccessToken(dave));
  ASSERT_TRUE(dave1);
  EXPECT_NE(dave1->token_id, dave0->token_id);
  EXPECT_GT(dave1->expires_at, dave0->expires_at);
  EXPECT_NE(r.err.find("access token renewed"), std::string::npos) << r.err;

  ExpectSecretsPrivate(d, {alice, carol, dave});
}

// `stip-developer rotate-token-key`: tokens of the old key keep working for
// the grace period (the server and the registry take them; a renewal gives a
// token of the new key), and `--revoke-previous` locks every old token out at
// once until the user enrols again.
TEST(RotationTest, TokenKeyRotationKeepsUsersServedOrLocksOldTokensOut) {
  const std::string model = test::ModelDir("kjv-gpt2");
  const std::string reference = ReferenceText("kjv-gpt2") + "\n";
  Deployment d;
  d.StartServer();
  const std::string t_bob = d.AddUser("bob"), t_alice = d.AddUser("alice");
  d.StartDeveloper(model);
  const std::string registry = d.developer_address();
  const std::string bob = d.Register("bob", t_bob);  // a token for 30 days
  const std::string key0 = StoredModels(d).begin()->second.token_key_id();
  d.StopDeveloper();
  const std::vector<std::string> short_ttl = {"--token-ttl-hours", std::to_string(30.0 / 3600)};
  d.StartDeveloper(model, short_ttl, registry);
  const std::string alice = d.Register("alice", t_alice);  // a token for 30 s
  std::optional<auth::TokenClaims> alice0 = auth::ReadClaimsUnverified(AccessToken(alice));
  ASSERT_TRUE(alice0);
  EXPECT_EQ(alice0->key_id, key0);

  // Not while serve runs (it would go on signing with the old key).
  RunResult r = test::Run({kDeveloper, "rotate-token-key", "--state", d.state_dir()}, 60);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("stop it first"), std::string::npos) << r.err;
  d.StopDeveloper();
  r = test::Run(
      {kDeveloper, "rotate-token-key", "--state", d.state_dir(), "--keep-previous-hours", "1"}, 60);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string key1 = r.out.substr(0, r.out.find('\n'));
  ASSERT_EQ(key1.size(), 32u) << r.out;
  EXPECT_NE(key1, key0);
  EXPECT_NE(r.err.find("stay accepted until"), std::string::npos) << r.err;
  d.StartDeveloper(model, short_ttl, registry);
  for (int i = 0; i < 100 && StoredModels(d).begin()->second.token_key_id() != key1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(StoredModels(d).begin()->second.token_key_id(), key1);

  // bob's token of the old key, as it is (no renewal): the server takes it.
  r = Deployment::Generate(bob, "And God said,", 40, {"--no-refresh"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, reference);
  // alice past half her token's life: the registry renews the old key's
  // token with one of the new key.
  SleepUntilUnix(alice0->issued_at + 16);
  r = Deployment::Generate(alice, "And God said,");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, reference);
  std::optional<auth::TokenClaims> alice1 = auth::ReadClaimsUnverified(AccessToken(alice));
  ASSERT_TRUE(alice1);
  EXPECT_EQ(alice1->key_id, key1);
  EXPECT_NE(r.err.find("access token renewed"), std::string::npos) << r.err;

  // A compromise: every earlier key's tokens are refused at once.
  d.StopDeveloper();
  r = test::Run({kDeveloper, "rotate-token-key", "--state", d.state_dir(), "--revoke-previous"},
                60);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string key2 = r.out.substr(0, r.out.find('\n'));
  EXPECT_NE(r.err.find("add-user NAME --reissue"), std::string::npos) << r.err;
  d.StartDeveloper(model, {}, registry);
  for (int i = 0; i < 100 && StoredModels(d).begin()->second.token_key_id() != key2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(StoredModels(d).begin()->second.token_key_id(), key2);
  for (const std::string& user : {bob, alice}) {
    r = Deployment::Generate(user, "And God said,", 4, {"--no-refresh"});
    EXPECT_NE(r.exit_code, 0) << user;
    EXPECT_NE(r.err.find("UNAUTHENTICATED"), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");
  }
  // Enrolling again gives a token of the new key.
  RunResult reissue =
      test::Run({kDeveloper, "add-user", "bob", "--reissue", "--state", d.state_dir()}, 60);
  ASSERT_EQ(reissue.exit_code, 0) << reissue.err;
  std::string token = reissue.out.substr(0, reissue.out.find('\n'));
  RunResult reg = d.TryRegister("bob", token, d.dir() + "/client-bob-again");
  ASSERT_EQ(reg.exit_code, 0) << reg.err;
  r = Deployment::Generate(d.dir() + "/client-bob-again", "And God said,");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, reference);
  EXPECT_EQ(auth::ReadClaimsUnverified(AccessToken(d.dir() + "/client-bob-again"))->key_id, key2);
  struct stat st;
  ASSERT_EQ(stat((d.state_dir() + "/token_keys_previous.json").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ExpectSecretsPrivate(d, {bob, alice, d.dir() + "/client-bob-again"});
}

}  // namespace
}  // namespace stip
