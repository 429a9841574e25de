// The developer (P1): its persistent state (instances, users, tokens), the
// Registry service streaming client bundles (insecure and TLS), the model
// pusher against an in-test ModelStore, and the stip-developer binary's
// add-user and serve commands end to end.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/auth/access_token.h"
#include "common/error.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/server_setup.h"
#include "common/rpc/status.h"
#include "common/rpc/tls.h"
#include "common/util/files.h"
#include "developer/instance_groups.h"
#include "developer/key_rotation.h"
#include "developer/model_pusher.h"
#include "developer/registry_service.h"
#include "developer/rpc_commands.h"
#include "developer/state_store.h"
#include "developer/user_registry.h"
#include "stip/v1/stip.grpc.pb.h"
#include "tests/process_util.h"
#include "tests/temp_dir.h"
#include "tests/tls_channel.h"

namespace stip {
namespace {

using test::TempDir;

const std::string kModel = std::string(STIP_TEST_DATA_DIR) + "/hf-reference/gpt2";

unsigned Mode(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return 0xffffffff;
  return st.st_mode & 07777;
}

// Every regular file under `dir`, relative path -> content.
std::map<std::string, std::string> Tree(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      out[std::filesystem::relative(e.path(), dir).string()] = ReadFile(e.path().string());
    }
  }
  return out;
}

bool IsHex64(const std::string& s) {
  return s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// A state directory with one instance of the gpt2 fixture, shared by the
// tests that only read it (made once: the transform is the slow part).
class SharedState {
 public:
  static SharedState& Get() {
    static SharedState s;
    return s;
  }
  StateStore& state() { return *state_; }
  const std::string& instance() const { return instance_; }

 private:
  SharedState() {
    state_ = std::make_unique<StateStore>(dir_ / "state");
    instance_ = state_->EnsureInstanceForModel(kModel).info.instance_id;
  }
  TempDir dir_;
  std::unique_ptr<StateStore> state_;
  std::string instance_;
};

TlsOptions Insecure() {
  TlsOptions t;
  t.insecure = true;
  return t;
}

// ---- state -------------------------------------------------------------------

TEST(StateStore, MakesPrivateInstanceAndFindsItAfterReopen) {
  TempDir tmp;
  std::string dir = tmp / "state";
  std::string id;
  {
    StateStore state(dir);
    EXPECT_EQ(Mode(dir), 0700u);
    EXPECT_FALSE(state.CurrentInstance().has_value());
    StateStore::Ensured e = state.EnsureInstanceForModel(kModel);
    EXPECT_TRUE(e.created);
    id = e.info.instance_id;
    EXPECT_TRUE(IsValidInstanceId(id));
    EXPECT_EQ(e.info.model_type, "gpt2");
    EXPECT_EQ(state.CurrentInstance().value_or(""), id);
    EXPECT_EQ(Mode(state.InstanceDir(id)), 0700u);
    EXPECT_EQ(Mode(state.KeysPath(id)), 0600u);
    EXPECT_EQ(Mode(JoinPath(state.InstanceDir(id), "instance.json")), 0600u);
    EXPECT_EQ(Mode(state.ClientDir(id)), 0700u);
    EXPECT_EQ(Mode(JoinPath(state.ClientDir(id), "client_keys.safetensors")), 0600u);
    EXPECT_TRUE(PathExists(JoinPath(state.ServerDir(id), "model.safetensors")));
    EXPECT_EQ(InstanceIdOfServerDir(state.ServerDir(id)), id);
    // No key file in what goes to servers.
    for (const auto& [name, content] : Tree(state.ServerDir(id))) {
      EXPECT_EQ(name.find("key"), std::string::npos) << name;
    }
  }
  {
    StateStore state(dir);  // a restart
    EXPECT_EQ(state.CurrentInstance().value_or(""), id);
    StateStore::Ensured e = state.EnsureInstanceForModel(kModel);
    EXPECT_FALSE(e.created);
    EXPECT_EQ(e.info.instance_id, id);
    ASSERT_EQ(state.ListInstances().size(), 1u);
    // Leftovers of an interrupted build are ignored.
    MakeDirectories(JoinPath(dir, "instances/" + id + "0.tmp-abcdef"), 0700);
    EXPECT_EQ(state.ListInstances().size(), 1u);
  }
}

TEST(StateStore, RejectsBadInstanceIds) {
  TempDir tmp;
  StateStore state(tmp / "state");
  EXPECT_THROW(state.InstanceDir("../etc"), Error);
  EXPECT_THROW(state.InstanceDir(""), Error);
  EXPECT_FALSE(state.HasInstance("../x"));
  EXPECT_THROW(state.SetCurrentInstance("abcdef"), Error);
}

bool IsAccessToken(const std::string& s) { return s.rfind("stip1.", 0) == 0 && s.size() > 100; }

const std::string kSomeInstance = "00112233445566778899aabbccddeeff";

TEST(UserRegistry, TokensWorkOnceAndOnlyHashesAndIdsAreStored) {
  TempDir tmp;
  std::string dir = tmp / "state";
  std::string token, access;
  {
    StateStore state(dir);
    UserRegistry users(state);
    token = users.AddUser("alice", kSomeInstance, false);
    EXPECT_TRUE(IsHex64(token));
    EXPECT_EQ(Mode(state.users_path()), 0600u);
    std::string json = ReadFile(state.users_path());
    EXPECT_EQ(json.find(token), std::string::npos);
    EXPECT_NE(json.find(Sha256Hex(token)), std::string::npos);
    try {
      users.AddUser("alice", "", false);
      ADD_FAILURE() << "a duplicate user was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kFailedPrecondition);
    }
    EXPECT_THROW(users.AddUser("../bob", "", false), Error);
    EXPECT_THROW(users.AddUser("", "", false), Error);
    auth::SigningKey key = state.TokenSigningKey();
    TokenIssue issue{&key, 3600};
    EXPECT_FALSE(users.Enrol("alice", token + "0", issue).has_value());
    EXPECT_FALSE(users.Enrol("alice", "", issue).has_value());
    EXPECT_FALSE(users.Enrol("mallory", token, issue).has_value());
    EXPECT_FALSE(users.Find("alice")->enrolled);
  }
  {
    StateStore state(dir);  // a restart: the pending user and the key are still there
    UserRegistry users(state);
    EXPECT_EQ(Mode(state.token_key_path()), 0600u);
    auth::SigningKey key = state.TokenSigningKey();
    TokenIssue issue{&key, 3600};
    auto e = users.Enrol("alice", token, issue);
    ASSERT_TRUE(e.has_value());
    access = e->access_token;
    EXPECT_TRUE(IsAccessToken(access)) << access;
    EXPECT_EQ(e->instance, kSomeInstance);
    EXPECT_TRUE(e->user.enrolled);
    auth::TokenCheck check =
        auth::VerifyToken(key.public_key(), access, kSomeInstance, auth::NowUnix());
    ASSERT_TRUE(check.ok()) << check.message;
    EXPECT_EQ(check.claims.user, "alice");
    EXPECT_EQ(check.claims.token_id, e->user.access_token_id);
    EXPECT_NEAR(check.claims.expires_at - auth::NowUnix(), 3600, 5);
    EXPECT_FALSE(users.Enrol("alice", token, issue).has_value())
        << "an enrolment token worked twice";
    std::string json = ReadFile(state.users_path());
    EXPECT_EQ(json.find(access), std::string::npos);
    EXPECT_NE(json.find(e->user.access_token_id), std::string::npos);
  }
  {
    StateStore state(dir);
    UserRegistry users(state);
    auth::SigningKey key = state.TokenSigningKey();
    const auth::PublicKey& pub = key.public_key();
    TokenIssue issue{&key, 3600};
    std::optional<UserRecord> u = users.Find("alice");
    ASSERT_TRUE(u.has_value());
    EXPECT_TRUE(u->enrolled);
    EXPECT_FALSE(u->enrolled_at.empty());
    EXPECT_FALSE(u->created_at.empty());
    using Check = UserRegistry::AccessCheck;
    EXPECT_EQ(users.Authenticate("alice", access, pub).outcome, Check::kOk);
    EXPECT_EQ(users.Authenticate("alice", token, pub).outcome, Check::kInvalid);
    EXPECT_EQ(users.Authenticate("alice", "", pub).outcome, Check::kInvalid);
    EXPECT_EQ(users.Authenticate("bob", access, pub).outcome, Check::kInvalid);
    const auth::SigningKey other = auth::SigningKey::Generate();
    EXPECT_EQ(users.Authenticate("alice", access, other.public_key()).outcome, Check::kInvalid);
    EXPECT_TRUE(users.RevokedTokens().empty());

    // Reissue: a new enrolment token; the old one dies and the access token is revoked.
    std::string second = users.AddUser("alice", kSomeInstance, true);
    EXPECT_NE(second, token);
    EXPECT_EQ(users.Authenticate("alice", access, pub).outcome, Check::kInvalid);
    std::vector<auth::RevokedToken> revoked = users.RevokedTokens();
    ASSERT_EQ(revoked.size(), 1u);
    EXPECT_EQ(revoked[0].token_id, u->access_token_id);
    EXPECT_EQ(revoked[0].expires_at, u->access_token_expires_at);
    EXPECT_EQ(Mode(state.revoked_path()), 0600u);
    std::string third = users.AddUser("alice", kSomeInstance, true);
    EXPECT_FALSE(users.Enrol("alice", second, issue).has_value()) << "a reissued-over token worked";
    EXPECT_FALSE(users.Enrol("alice", token, issue).has_value());
    auto again = users.Enrol("alice", third, issue);
    ASSERT_TRUE(again.has_value());
    EXPECT_EQ(users.List().size(), 1u);

    // Revoke: the Registry refuses the user; the token goes on the list.
    const std::string pending = users.AddUser("carol", kSomeInstance, false);
    EXPECT_EQ(users.Revoke("alice"), again->user.access_token_id);
    EXPECT_EQ(users.Authenticate("alice", again->access_token, pub).outcome, Check::kRevoked);
    EXPECT_EQ(users.RevokedTokens().size(), 2u);
    EXPECT_TRUE(users.Find("alice")->revoked);
    EXPECT_EQ(users.Revoke("carol"), "");  // never enrolled: the enrolment token dies
    EXPECT_FALSE(users.CheckEnrolmentToken("carol", pending));
    EXPECT_FALSE(users.Enrol("carol", pending, issue).has_value());
    EXPECT_THROW(users.Revoke("nobody"), Error);
    // --reissue lifts the revocation.
    std::string fourth = users.AddUser("alice", kSomeInstance, true);
    EXPECT_FALSE(users.Find("alice")->revoked);
    EXPECT_TRUE(users.Enrol("alice", fourth, issue).has_value());
    EXPECT_EQ(users.RevokedTokens().size(), 2u);
  }
  // Nothing in the state holds a raw token.
  for (const auto& [name, content] : Tree(dir)) {
    EXPECT_EQ(content.find(token), std::string::npos) << name;
    EXPECT_EQ(content.find(access), std::string::npos) << name;
  }
}

TEST(UserRegistry, TheSigningKeyIsMadeOnceAndKeptPrivate) {
  TempDir tmp;
  StateStore state(tmp / "state");
  bool created = false;
  auth::SigningKey a = auth::SigningKey::LoadOrCreate(state.token_key_path(), &created);
  EXPECT_TRUE(created);
  auth::SigningKey b = auth::SigningKey::LoadOrCreate(state.token_key_path(), &created);
  EXPECT_FALSE(created);
  EXPECT_EQ(a.public_key().key_id(), b.public_key().key_id());
  EXPECT_EQ(Mode(state.token_key_path()), 0600u);
  // Several processes racing on first use end up with one key.
  TempDir race;
  std::vector<std::string> ids(4);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < ids.size(); ++i) {
    threads.emplace_back([&, i] {
      ids[i] = auth::SigningKey::LoadOrCreate(race / "key.pem").public_key().key_id();
    });
  }
  for (auto& t : threads) t.join();
  for (const std::string& id : ids) EXPECT_EQ(id, ids[0]);
  // A key file others can read is refused.
  chmod(state.token_key_path().c_str(), 0644);
  EXPECT_THROW(state.TokenSigningKey(), Error);
}

// ---- Registry ------------------------------------------------------------------

struct Received {
  grpc::Status status;
  v1::BundleHeader header;
  std::string digest;
  int chunks = 0;
};

template <typename Reader>
Received Receive(Reader* reader, const std::string& out_dir) {
  Received r;
  v1::BundleChunk msg;
  std::unique_ptr<DirectoryReceiver> rx;
  bool committed = false;
  while (reader->Read(&msg)) {
    if (msg.has_header()) {
      r.header = msg.header();
      rx = std::make_unique<DirectoryReceiver>(out_dir, r.header.files(), ReceiveLimits{}, 0700,
                                               true);
    } else if (msg.has_chunk()) {
      EXPECT_TRUE(rx) << "chunk before the header";
      if (!rx) break;
      ++r.chunks;
      rx->Accept(msg.chunk());
    } else if (msg.has_trailer()) {
      EXPECT_TRUE(rx) << "trailer before the header";
      if (!rx) break;
      r.digest = msg.trailer().sha256();
      rx->Commit(r.digest);
      committed = true;
    }
  }
  r.status = reader->Finish();
  if (r.status.ok()) {
    EXPECT_TRUE(committed) << "the stream ended without a trailer";
  }
  return r;
}

Received Register(v1::Registry::Stub* stub, const std::string& user, const std::string& token,
                  const std::string& out_dir) {
  grpc::ClientContext ctx;
  v1::RegisterRequest req;
  req.set_user(user);
  req.set_enrolment_token(token);
  auto reader = stub->Register(&ctx, req);
  return Receive(reader.get(), out_dir);
}

Received Fetch(v1::Registry::Stub* stub, const std::string& user, const std::string& token,
               const std::string& out_dir) {
  grpc::ClientContext ctx;
  v1::FetchBundleRequest req;
  req.set_user(user);
  req.set_access_token(token);
  auto reader = stub->FetchBundle(&ctx, req);
  return Receive(reader.get(), out_dir);
}

// A RegistryService on 127.0.0.1 (plaintext), and a stub for it.
struct RunningRegistry {
  RegistryService service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::Registry::Stub> stub;

  RunningRegistry(StateStore* state, UserRegistry* users, const RegistryConfig& config)
      : service(state, users, config) {
    ServerSetup setup;
    setup.address = "127.0.0.1:0";
    setup.tls.insecure = true;
    setup.name = "test registry";
    int port = 0;
    server = StartServer(setup, {&service}, &port);
    stub = v1::Registry::NewStub(MakeChannel("127.0.0.1:" + std::to_string(port), Insecure(), "t"));
  }
  ~RunningRegistry() { server->Shutdown(); }
};

TEST(Registry, StreamsTheBundleOnceForAnEnrolmentTokenThenForTheAccessToken) {
  SharedState& shared = SharedState::Get();
  TempDir tmp;
  StateStore& state = shared.state();
  UserRegistry users(state);
  std::string token = users.AddUser("reg-alice", "", true);
  users.AddUser("reg-bob", "", true);

  RegistryConfig rc;
  rc.server_address = "server.example:7443";
  rc.server_ca_pem = "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n";
  rc.chunk_bytes = 16 << 10;  // several chunks per file
  RunningRegistry registry(&state, &users, rc);
  auto& stub = registry.stub;

  Received r = Register(stub.get(), "reg-alice", token, tmp / "bundle");
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.header.user(), "reg-alice");
  EXPECT_EQ(r.header.instance_id(), shared.instance());
  EXPECT_EQ(r.header.server_address(), rc.server_address);
  EXPECT_EQ(r.header.server_ca_pem(), rc.server_ca_pem);
  std::string access = r.header.access_token();
  EXPECT_TRUE(IsAccessToken(access)) << access;
  {
    auth::TokenCheck check = auth::VerifyToken(state.TokenSigningKey().public_key(), access,
                                               shared.instance(), auth::NowUnix());
    EXPECT_TRUE(check.ok()) << check.message;
    EXPECT_EQ(check.claims.user, "reg-alice");
    EXPECT_NEAR(check.claims.expires_at - auth::NowUnix(), rc.token_ttl_s, 5);
  }
  EXPECT_GT(r.chunks, 2);
  EXPECT_TRUE(IsHex64(r.digest));
  std::string client_dir = state.ClientDir(shared.instance());
  EXPECT_EQ(Tree(tmp / "bundle"), Tree(client_dir));
  for (const auto& e : r.header.files()) {
    EXPECT_EQ(e.mode(), Mode(JoinPath(client_dir, e.name()))) << e.name();
    EXPECT_EQ(Mode(JoinPath(tmp / "bundle", e.name())), e.mode()) << e.name();
  }
  EXPECT_EQ(users.Find("reg-alice")->bundle_instance, shared.instance());
  EXPECT_EQ(ReadFile(state.users_path()).find(access), std::string::npos);

  // The same token again, a wrong token, an unknown user: one answer.
  for (auto [user, tok] : std::vector<std::pair<std::string, std::string>>{
           {"reg-alice", token}, {"reg-bob", token}, {"nobody", token}, {"reg-bob", ""}}) {
    Received bad = Register(stub.get(), user, tok, tmp / ("bad-" + user));
    EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << user;
    EXPECT_EQ(bad.status.error_message(), kBadEnrolmentMessage) << user;
    EXPECT_FALSE(PathExists(tmp / ("bad-" + user)));
  }

  // FetchBundle with the access token: the same bundle, the same token echoed.
  Received again = Fetch(stub.get(), "reg-alice", access, tmp / "again");
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.header.access_token(), access);
  EXPECT_EQ(again.digest, r.digest);
  EXPECT_EQ(Tree(tmp / "again"), Tree(client_dir));
  for (auto [user, tok] : std::vector<std::pair<std::string, std::string>>{
           {"reg-alice", token}, {"reg-alice", ""}, {"reg-bob", access}, {"nobody", access}}) {
    Received bad = Fetch(stub.get(), user, tok, tmp / "bad");
    EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << user;
    EXPECT_EQ(bad.status.error_message(), kBadAccessMessage) << user;
  }

  // Revoked: FetchBundle and Register refuse, with PERMISSION_DENIED for the token.
  users.Revoke("reg-alice");
  Received revoked = Fetch(stub.get(), "reg-alice", access, tmp / "revoked");
  EXPECT_EQ(revoked.status.error_code(), grpc::StatusCode::PERMISSION_DENIED)
      << revoked.status.error_message();
  EXPECT_EQ(revoked.status.error_message(), kRevokedAccessMessage);
  EXPECT_FALSE(PathExists(tmp / "revoked"));
  std::string bob_token = users.AddUser("reg-bob", "", true);
  users.Revoke("reg-bob");
  Received bob = Register(stub.get(), "reg-bob", bob_token, tmp / "bob");
  EXPECT_EQ(bob.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

grpc::Status Renew(v1::Registry::Stub* stub, const std::string& user, const std::string& token,
                   v1::RenewTokenResponse* resp) {
  grpc::ClientContext ctx;
  v1::RenewTokenRequest req;
  req.set_user(user);
  req.set_access_token(token);
  return stub->RenewToken(&ctx, req, resp);
}

// Instance groups in the state and what the Registry hands out: a new
// exclusive group waits for its instance to be deployed (the enrolment token
// is kept), a rotation switches the group's users only when serve switches
// it, FetchBundle then issues a token for the new instance, RenewToken
// renews (the old token is revoked), and a rotated-out instance is removed
// from the state.
TEST(InstanceGroups, GroupsAndRotationsDecideWhatTheRegistryHandsOut) {
  TempDir tmp;
  StateStore state(tmp / "state");
  const std::string d0 = state.EnsureInstanceForModel(kModel).info.instance_id;
  UserRegistry users(state);
  InstanceGroups groups(state);
  EXPECT_TRUE(IsValidGroupName("lab"));
  EXPECT_TRUE(IsValidGroupName(ExclusiveGroup("bob@example.org")));
  EXPECT_FALSE(IsValidGroupName("user:"));
  EXPECT_FALSE(IsValidGroupName("../x"));
  EXPECT_EQ(groups.InstanceFor("", ""), d0);

  const Rotation made = CreateGroup(state, ExclusiveGroup("bob"), "");
  EXPECT_EQ(made.from, "");
  EXPECT_NE(made.to, d0);
  EXPECT_EQ(Mode(JoinPath(state.dir(), "groups.json")), 0600u);
  EXPECT_EQ(Mode(state.ServerDir(made.to)), 0700u);
  EXPECT_THROW(CreateGroup(state, ExclusiveGroup("bob"), ""), Error);
  EXPECT_FALSE(groups.InstanceOf("user:bob").has_value());
  const std::string t_alice = users.AddUser("alice", "", false);
  const std::string t_bob = users.AddUser("bob", "", false, "user:bob");

  RunningRegistry registry(&state, &users, RegistryConfig());
  auto& stub = registry.stub;

  Received early = Register(stub.get(), "bob", t_bob, tmp / "early");
  EXPECT_EQ(early.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(early.status.error_message().find("being deployed"), std::string::npos)
      << early.status.error_message();
  groups.Switch(made.id);  // what serve does once every server has it
  EXPECT_EQ(groups.Rotations().back().phase, Rotation::Phase::kDone);
  Received bob = Register(stub.get(), "bob", t_bob, tmp / "bob");
  ASSERT_TRUE(bob.status.ok()) << bob.status.error_message();
  EXPECT_EQ(bob.header.instance_id(), made.to);
  Received alice = Register(stub.get(), "alice", t_alice, tmp / "alice");
  ASSERT_TRUE(alice.status.ok()) << alice.status.error_message();
  EXPECT_EQ(alice.header.instance_id(), d0);

  // Renewal: a new token for the same instance; the old one is revoked.
  v1::RenewTokenResponse renewed;
  grpc::Status st = Renew(stub.get(), "alice", alice.header.access_token(), &renewed);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(renewed.instance_id(), d0);
  EXPECT_NE(renewed.access_token(), alice.header.access_token());
  EXPECT_GT(renewed.expires_at(), auth::NowUnix());
  v1::RenewTokenResponse again;
  EXPECT_EQ(Renew(stub.get(), "alice", alice.header.access_token(), &again).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Renew(stub.get(), "bob", renewed.access_token(), &again).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // Rotate everything: nothing changes for users until the switch.
  RotateRequest request;
  request.all = true;
  request.drain_seconds = 60;
  std::vector<Rotation> rotations = StartRotations(state, request);
  ASSERT_EQ(rotations.size(), 2u);
  EXPECT_THROW(StartRotations(state, request), Error);  // still deploying
  const Rotation& def = rotations[0].group == kDefaultGroup ? rotations[0] : rotations[1];
  EXPECT_EQ(def.from, d0);
  EXPECT_EQ(groups.ReservedInstances().count(def.to), 1u);
  Received still = Fetch(stub.get(), "alice", renewed.access_token(), tmp / "still");
  ASSERT_TRUE(still.status.ok()) << still.status.error_message();
  EXPECT_EQ(still.header.instance_id(), d0);

  const int64_t before = auth::NowUnix();
  Rotation switched = groups.Switch(def.id);
  EXPECT_EQ(switched.phase, Rotation::Phase::kDraining);
  EXPECT_GE(switched.drain_deadline, before + 60);
  EXPECT_EQ(state.CurrentInstance().value_or(""), def.to);
  Received moved = Fetch(stub.get(), "alice", renewed.access_token(), tmp / "moved");
  ASSERT_TRUE(moved.status.ok()) << moved.status.error_message();
  EXPECT_EQ(moved.header.instance_id(), def.to);
  EXPECT_NE(moved.header.access_token(), renewed.access_token());
  EXPECT_EQ(Fetch(stub.get(), "alice", renewed.access_token(), tmp / "old").status.error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // Users pinned to the old instance follow it; the old one goes.
  users.AddUser("carol", d0, false);
  EXPECT_EQ(users.MoveInstance(d0, def.to), 1);
  EXPECT_EQ(users.Find("carol")->instance, def.to);
  state.RemoveInstance(d0);
  groups.MarkDone(def.id);
  EXPECT_FALSE(state.HasInstance(d0));
  EXPECT_EQ(groups.RetiringInstances().count(d0), 0u);
  for (const std::string& name : ListDirectory(JoinPath(state.dir(), "instances"))) {
    EXPECT_EQ(name.find(d0), std::string::npos) << name;
  }
}

TEST(Registry, ExpiredAccessTokensAreRefused) {
  SharedState& shared = SharedState::Get();
  TempDir tmp;
  StateStore& state = shared.state();
  UserRegistry users(state);
  std::string token = users.AddUser("exp-dan", "", true);
  RegistryConfig rc;
  rc.token_ttl_s = 1;
  RunningRegistry registry(&state, &users, rc);
  auto& stub = registry.stub;
  Received r = Register(stub.get(), "exp-dan", token, tmp / "bundle");
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  Received late = Fetch(stub.get(), "exp-dan", r.header.access_token(), tmp / "late");
  EXPECT_EQ(late.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(late.status.error_message().find("expired"), std::string::npos)
      << late.status.error_message();
}

TEST(Registry, AValidTokenIsNotConsumedWhenThereIsNoBundleToSend) {
  TempDir tmp;
  StateStore state(tmp / "state");  // no instance yet
  UserRegistry users(state);
  std::string token = users.AddUser("early", "", false);
  RunningRegistry registry(&state, &users, RegistryConfig{});
  auto& stub = registry.stub;
  Received r = Register(stub.get(), "early", token, tmp / "bundle");
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << r.status.error_message();
  EXPECT_TRUE(users.CheckEnrolmentToken("early", token));
  EXPECT_FALSE(users.Find("early")->enrolled);
  Received bad = Register(stub.get(), "early", token + "0", tmp / "bundle");
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  Received unknown = Register(stub.get(), "late", token, tmp / "bundle");
  EXPECT_EQ(unknown.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
}

// ---- an in-test ModelStore ------------------------------------------------------

class TestModelStore final : public v1::ModelStore::Service {
 public:
  explicit TestModelStore(std::string root) : root_(std::move(root)) {}
  bool corrupt = false;  // flip a byte of the first chunk (a transfer error)
  int uploads = 0;
  int loads = 0;

  grpc::Status Upload(grpc::ServerContext*, grpc::ServerReader<v1::UploadRequest>* reader,
                      v1::ModelInfo* info) override {
    try {
      v1::UploadRequest req;
      if (!reader->Read(&req) || !req.has_header()) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "header first");
      }
      const v1::UploadHeader header = req.header();
      const std::string id = header.instance_id();
      std::string dir = JoinPath(root_, id);
      if (PathExists(dir)) return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, id + " exists");
      DirectoryReceiver rx(dir, header.files(), ReceiveLimits{}, 0755, false);
      bool first = true;
      while (reader->Read(&req)) {
        if (req.has_chunk()) {
          v1::FileChunk c = req.chunk();
          if (corrupt && first && !c.data().empty()) c.mutable_data()->at(0) ^= 1;
          first = false;
          rx.Accept(c);
        } else if (req.has_trailer()) {
          rx.Commit(req.trailer().sha256());
          std::lock_guard<std::mutex> lock(mu_);
          ++uploads;
          digests_[id] = req.trailer().sha256();
          if (header.load()) loaded_.insert(id);
          info->set_instance_id(id);
          info->set_loaded(header.load());
          info->set_stored_bytes(rx.bytes_received());
          return grpc::Status::OK;
        }
      }
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no trailer");
    } catch (...) {
      return CurrentExceptionToStatus();
    }
  }

  grpc::Status List(grpc::ServerContext*, const v1::ListModelsRequest*,
                    v1::ListModelsResponse* resp) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& name : ListDirectory(root_)) {
      if (name.find(".tmp-") != std::string::npos) continue;
      v1::ModelInfo* m = resp->add_models();
      m->set_instance_id(name);
      m->set_loaded(loaded_.count(name) > 0);
    }
    return grpc::Status::OK;
  }

  grpc::Status Load(grpc::ServerContext*, const v1::ModelRef* ref, v1::ModelInfo* info) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!PathExists(JoinPath(root_, ref->instance_id()))) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such model");
    }
    ++loads;
    loaded_.insert(ref->instance_id());
    info->set_instance_id(ref->instance_id());
    info->set_loaded(true);
    return grpc::Status::OK;
  }

  grpc::Status SetAccess(grpc::ServerContext*, const v1::SetAccessRequest* req,
                         v1::AccessInfo* info) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!PathExists(JoinPath(root_, req->instance_id()))) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such model");
    }
    access_[req->instance_id()] = *req;
    info->set_instance_id(req->instance_id());
    info->set_revoked_tokens(req->revoked_size());
    return grpc::Status::OK;
  }

  std::string digest(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return digests_[id];
  }
  std::optional<v1::SetAccessRequest> access(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = access_.find(id);
    if (it == access_.end()) return std::nullopt;
    return it->second;
  }

 private:
  std::string root_;
  std::mutex mu_;
  std::map<std::string, std::string> digests_;
  std::map<std::string, v1::SetAccessRequest> access_;
  std::set<std::string> loaded_;
};

struct RunningStore {
  TempDir dir;
  TestModelStore service{dir / "store"};
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  explicit RunningStore(const std::string& address = "127.0.0.1:0",
                        const TlsOptions* tls = nullptr) {
    MakeDirectories(dir / "store", 0700);
    ServerSetup setup;
    setup.address = address;
    if (tls) {
      setup.tls = *tls;
    } else {
      setup.tls.insecure = true;
    }
    setup.name = "test model store";
    server = StartServer(setup, {&service}, &port);
  }
  ~RunningStore() { server->Shutdown(); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

// serve's path (EnsureModelOnServer) finds the instance stored and does not
// upload it again; it is loaded, with `loads` loads so far.
void ExpectEnsuredWithoutUpload(RunningStore& store, const std::string& server_dir, int loads) {
  SharedState& shared = SharedState::Get();
  PushResult ensured =
      EnsureModelOnServer(store.address(), Insecure(), shared.instance(), server_dir);
  EXPECT_TRUE(ensured.already_stored);
  EXPECT_TRUE(ensured.info.loaded());
  EXPECT_EQ(store.service.uploads, 1);
  EXPECT_EQ(store.service.loads, loads);
}

TEST(ModelPusher, UploadsATransformedDirectoryWithItsDigest) {
  SharedState& shared = SharedState::Get();
  std::string server_dir = shared.state().ServerDir(shared.instance());
  RunningStore store;
  auto channel = MakeChannel(store.address(), Insecure(), "t");
  EXPECT_FALSE(ServerHasModel(channel, shared.instance()));
  PushOptions opt;
  opt.chunk_bytes = 64 << 10;
  PushResult r = PushModel(channel, shared.instance(), server_dir, opt);
  EXPECT_FALSE(r.already_stored);
  EXPECT_TRUE(IsHex64(r.sha256));
  EXPECT_EQ(r.sha256, store.service.digest(shared.instance()));
  EXPECT_EQ(r.info.instance_id(), shared.instance());
  EXPECT_TRUE(r.info.loaded());
  EXPECT_EQ(Tree(store.dir / ("store/" + shared.instance())), Tree(server_dir));
  uint64_t total = 0;
  for (const auto& f : ListFilesForTransfer(server_dir)) total += f.size;
  EXPECT_EQ(r.bytes, total);
  EXPECT_EQ(r.info.stored_bytes(), total);

  // Again: ALREADY_EXISTS is success.
  PushResult again = PushModel(channel, shared.instance(), server_dir, opt);
  EXPECT_TRUE(again.already_stored);
  EXPECT_TRUE(ServerHasModel(channel, shared.instance()));
  // serve's path lists first and does not upload again.
  ExpectEnsuredWithoutUpload(store, server_dir, 0);
}

TEST(ModelPusher, LoadsAStoredButUnloadedModel) {
  SharedState& shared = SharedState::Get();
  std::string server_dir = shared.state().ServerDir(shared.instance());
  RunningStore store;
  PushOptions store_only;
  store_only.load = false;
  PushResult r = PushModel(MakeChannel(store.address(), Insecure(), "t"), shared.instance(),
                           server_dir, store_only);
  EXPECT_FALSE(r.info.loaded());
  ExpectEnsuredWithoutUpload(store, server_dir, 1);
}

TEST(ModelPusher, ReportsADigestMismatch) {
  SharedState& shared = SharedState::Get();
  RunningStore store;
  store.service.corrupt = true;
  auto channel = MakeChannel(store.address(), Insecure(), "t");
  try {
    PushModel(channel, shared.instance(), shared.state().ServerDir(shared.instance()));
    ADD_FAILURE() << "a corrupted upload was reported as stored";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kDataLoss) << e.what();
    EXPECT_NE(std::string(e.what()).find("SHA-256 mismatch"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(ListDirectory(store.dir / "store").empty());
  // The same through serve's path: no retry, an error at once.
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(EnsureModelOnServer(store.address(), Insecure(), shared.instance(),
                                   shared.state().ServerDir(shared.instance())),
               Error);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(ModelPusher, RetriesUntilTheServerComesUpAndGivesUpLater) {
  SharedState& shared = SharedState::Get();
  std::string server_dir = shared.state().ServerDir(shared.instance());
  int port = FreePort();
  std::string address = "127.0.0.1:" + std::to_string(port);
  RetryOptions quick;
  quick.max_seconds = 1;
  auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(EnsureModelOnServer(address, Insecure(), shared.instance(), server_dir, {}, quick),
               Error);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(8));

  std::unique_ptr<RunningStore> store;
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    store = std::make_unique<RunningStore>(address);
  });
  RetryOptions patient;
  patient.max_seconds = 30;
  PushResult r;
  EXPECT_NO_THROW(
      r = EnsureModelOnServer(address, Insecure(), shared.instance(), server_dir, {}, patient));
  late.join();
  EXPECT_FALSE(r.already_stored);
  ASSERT_TRUE(store);
  EXPECT_EQ(store->service.digest(shared.instance()), r.sha256);
}

// ---- TLS -------------------------------------------------------------------------

TEST(Tls, RegistryAndPushOverTls) {
  if (std::system("openssl version >/dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl CLI";
  SharedState& shared = SharedState::Get();
  // The demo PKI (its developer certificate serves the registry and
  // authenticates the push), and an unrelated CA.
  TempDir pki, other;
  test::MakeDemoPki(pki.path());
  test::MakeDemoPki(other.path());
  TlsOptions server_tls;
  server_tls.cert_file = pki / "developer.pem";
  server_tls.key_file = pki / "developer.key";

  // Registry over TLS; the client trusts the test CA.
  StateStore& state = shared.state();
  UserRegistry users(state);
  std::string token = users.AddUser("tls-carol", "", true);
  RegistryConfig rc;
  rc.server_address = "localhost:1";
  rc.server_ca_pem = ReadFile(pki / "ca.pem");
  RegistryService service(&state, &users, rc);
  ServerSetup setup;
  setup.address = "127.0.0.1:0";
  setup.tls = server_tls;
  setup.name = "test registry (TLS)";
  int port = 0;
  auto server = StartServer(setup, {&service}, &port);
  TlsOptions ctls;
  ctls.ca_file = pki / "ca.pem";
  TempDir out;
  for (std::string host : {"localhost", "127.0.0.1"}) {
    auto stub = v1::Registry::NewStub(MakeChannel(host + ":" + std::to_string(port), ctls, "t"));
    if (host == "localhost") {
      Received r = Register(stub.get(), "tls-carol", token, out / "bundle");
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
      EXPECT_EQ(r.header.server_ca_pem(), rc.server_ca_pem);
      EXPECT_EQ(Tree(out / "bundle"), Tree(state.ClientDir(shared.instance())));
      Received f = Fetch(stub.get(), "tls-carol", r.header.access_token(), out / "fetched");
      EXPECT_TRUE(f.status.ok()) << f.status.error_message();
    } else {
      Received bad = Register(stub.get(), "tls-carol", token, out / "again");
      EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    }
  }
  // A client that trusts another CA gets nothing.
  {
    TlsOptions untrusting;
    untrusting.ca_file = other / "ca.pem";
    auto stub =
        v1::Registry::NewStub(MakeChannel("localhost:" + std::to_string(port), untrusting, "t"));
    Received r = Register(stub.get(), "tls-carol", token, out / "untrusted");
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  server->Shutdown();

  // Push to a TLS model store, verifying it with the CA and presenting our certificate.
  RunningStore store("127.0.0.1:0", &server_tls);
  TlsOptions push_tls;
  push_tls.ca_file = pki / "ca.pem";
  push_tls.cert_file = pki / "developer.pem";
  push_tls.key_file = pki / "developer.key";
  PushResult r = EnsureModelOnServer(store.address(), push_tls, shared.instance(),
                                     state.ServerDir(shared.instance()));
  EXPECT_FALSE(r.already_stored);
  EXPECT_EQ(store.service.digest(shared.instance()), r.sha256);
}

// ---- the binary ----------------------------------------------------------------

// The first line of `out`; `more` gets what follows it.
std::string FirstLine(const std::string& out, std::string* more) {
  const size_t nl = out.find('\n');
  *more = nl == std::string::npos ? "" : out.substr(nl + 1);
  return out.substr(0, nl);
}

// add-user's stdout is the token alone; serve pushes, prints its address, serves
// the registry and exits 0 on SIGTERM; a restart reuses the instance and the users.
TEST(Binary, AddUserAndServe) {
  const std::string bin = STIP_DEVELOPER_BIN;
  TempDir tmp;
  std::string state_dir = tmp / "state";
  auto add_user = [&] { return test::Run({bin, "add-user", "dave", "--state", state_dir}, 120); };
  test::RunResult added = add_user();
  ASSERT_EQ(added.exit_code, 0) << added.err;
  ASSERT_EQ(added.out.size(), 65u) << added.out;  // 64 hex digits and a newline
  const std::string token = added.out.substr(0, 64);
  EXPECT_TRUE(IsHex64(token));
  EXPECT_EQ(added.err.find(token), std::string::npos);
  std::string access;
  EXPECT_NE(add_user().exit_code, 0) << "add-user accepted an existing name";
  EXPECT_EQ(Mode(state_dir), 0700u);
  EXPECT_EQ(Mode(JoinPath(state_dir, "users.json")), 0600u);

  RunningStore store;
  std::string id;
  for (int run = 0; run < 2; ++run) {
    std::string err_file = tmp / ("serve" + std::to_string(run) + ".err");
    test::Daemon serve({bin, "serve", "--model", kModel, "--state", state_dir, "--listen",
                        "127.0.0.1:0", "--server", store.address(), "--public-server-address",
                        "cloud.example:443", "--insecure", "--access-sync-s", "0.2"},
                       err_file);
    serve.WaitListening();
    ASSERT_EQ(serve.lines().size(), 1u) << ReadFile(err_file);
    const std::string& line = serve.lines()[0];
    const std::string prefix = "stip-developer listening on 127.0.0.1:";
    ASSERT_EQ(line.rfind(prefix, 0), 0u) << line << "\n" << ReadFile(err_file);
    std::string address = line.substr(prefix.size() - 10);
    auto stub = v1::Registry::NewStub(MakeChannel(address, Insecure(), "t"));
    if (run == 0) {
      Received r = Register(stub.get(), "dave", token, tmp / "bundle");
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
      EXPECT_EQ(r.header.server_address(), "cloud.example:443");
      EXPECT_EQ(r.header.server_ca_pem(), "");
      id = r.header.instance_id();
      EXPECT_EQ(store.service.digest(id).size(), 64u) << "serve did not push the instance";
      std::optional<v1::SetAccessRequest> registered = store.service.access(id);
      ASSERT_TRUE(registered.has_value()) << "serve did not register its token key";
      StateStore state(state_dir);
      EXPECT_EQ(registered->token_key_pem(), state.TokenSigningKey().public_key().pem());
      EXPECT_EQ(registered->revoked_size(), 0);
      EXPECT_EQ(Tree(tmp / "bundle"), Tree(JoinPath(state_dir, "instances/" + id + "/client")));
      access = r.header.access_token();  // for the second run
    } else {
      Received r = Fetch(stub.get(), "dave", access, tmp / "fetched");
      ASSERT_TRUE(r.status.ok()) << r.status.error_message();
      EXPECT_EQ(r.header.instance_id(), id);  // the instance survived the restart
      // revoke-user while serve runs: the Registry refuses at once, and the
      // revocation reaches the server within the sync interval.
      test::RunResult rv = test::Run({bin, "revoke-user", "dave", "--state", state_dir}, 120);
      EXPECT_EQ(rv.exit_code, 0) << rv.err;
      Received refused = Fetch(stub.get(), "dave", access, tmp / "refused");
      EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
      int revoked = 0;
      for (int i = 0; i < 100 && revoked == 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        revoked = store.service.access(id)->revoked_size();
      }
      ASSERT_EQ(revoked, 1) << "the revocation did not reach the server";
      auth::TokenCheck check = auth::VerifyToken(
          StateStore(state_dir).TokenSigningKey().public_key(), access, id, auth::NowUnix());
      EXPECT_EQ(store.service.access(id)->revoked(0).token_id(), check.claims.token_id);
    }
    serve.Signal(SIGTERM);
    EXPECT_EQ(serve.ReadRest(), "") << "serve printed more than its address on stdout";
    EXPECT_EQ(serve.Stop(), 0) << ReadFile(err_file);
    std::string err = ReadFile(err_file);
    EXPECT_EQ(err.find(token), std::string::npos) << "a token was logged";
    EXPECT_EQ(err.find(access), std::string::npos) << "a token was logged";
  }
  EXPECT_EQ(store.service.uploads, 1);  // the restart found the instance on the server
  EXPECT_EQ(ListDirectory(JoinPath(state_dir, "instances")).size(), 1u);

  // push: one summary line on stdout; a second push finds it stored.
  RunningStore other;
  std::string server_dir = JoinPath(state_dir, "instances/" + id + "/server");
  std::string push_err;
  auto push = [&](const std::vector<std::string>& extra, int* status) {
    std::vector<std::string> args = {bin,        "push",          "--model-dir", server_dir,
                                     "--server", other.address(), "--insecure"};
    args.insert(args.end(), extra.begin(), extra.end());
    test::RunResult r = test::Run(args, 120);
    *status = r.exit_code;
    push_err = r.err;
    std::string more;
    std::string first = FirstLine(r.out, &more);
    EXPECT_EQ(more, "");
    return first;
  };
  int rc = -1;
  std::string line = push({"--no-load"}, &rc);
  EXPECT_EQ(rc, 0) << push_err;
  EXPECT_EQ(line.rfind("pushed instance " + id + " to " + other.address() + ": ", 0), 0u) << line;
  EXPECT_EQ(Tree(other.dir / ("store/" + id)), Tree(server_dir));
  EXPECT_FALSE(other.service.access(id).has_value()) << "push without --state registered a key";
  line = push({"--instance", id, "--state", state_dir}, &rc);
  EXPECT_EQ(rc, 0) << push_err;
  EXPECT_EQ(line, "instance " + id + " already stored on " + other.address());
  ASSERT_TRUE(other.service.access(id).has_value()) << "push --state registered no key";
  EXPECT_EQ(other.service.access(id)->revoked_size(), 1);
  push({"--instance", "0123abcd"}, &rc);
  EXPECT_NE(rc, 0) << "push accepted an instance id its directory does not hold";
}

TEST(RpcCommands, WithPort) {
  EXPECT_EQ(WithPort("127.0.0.1:0", 5), "127.0.0.1:5");
  EXPECT_EQ(WithPort("[::]:0", 7), "[::]:7");
  EXPECT_EQ(WithPort("0.0.0.0:9000", 9000), "0.0.0.0:9000");
}

}  // namespace
}  // namespace stip
