// stip-server in process: a real gRPC server on 127.0.0.1:0 (plaintext, and
// once with TLS), models transformed from the Hugging Face fixtures, uploaded
// through ModelStore.Upload on the admin port and run through
// Inference.Session on the public port with access tokens signed by a test
// developer key; the logits, un-permuted on the client side, must equal the
// plain model's.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <limits>
#include <mutex>
#include <thread>

#include "common/auth/access_token.h"
#include "common/client/client_permuter.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/format/safetensors.h"
#include "common/keys/model_keys.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/logits_transport.h"
#include "common/rpc/status.h"
#include "common/rpc/tensor_wire.h"
#include "common/rpc/tls.h"
#include "common/transform/transform_checkpoint.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"
#include "server/batch_scheduler.h"
#include "server/stip_server.h"
#include "stip/v1/stip.grpc.pb.h"
#include "tests/access_tokens.h"
#include "tests/model_store_client.h"
#include "tests/prepared_model.h"
#include "tests/session_client.h"
#include "tests/temp_dir.h"
#include "tests/test_util.h"
#include "tests/tls_channel.h"

namespace stip {
namespace {

using test::FixtureDir;
using test::MaxAbsDiff;
using Ids = std::vector<int64_t>;

constexpr double kTolerance = 1e-5;
// Against Hugging Face's own logits (another implementation, fp32 on CPU).
constexpr double kHfTolerance = 1e-4;

using test::DeveloperKey;
using test::HasTempEntry;
using test::ListModels;
using test::Models;
using test::Prepare;
using test::Prepared;
using test::SetAccess;
using test::TempDir;
using test::TokenFor;
using test::TokenSpec;
using test::Upload;

// Session::Open's default: a valid token for the instance opened.
const std::string kValidToken = "(a valid token)";

// ---- client helpers -------------------------------------------------------------

std::shared_ptr<grpc::Channel> Channel(const StipServer& server) {
  TlsOptions tls;
  tls.insecure = true;
  return MakeChannel("127.0.0.1:" + std::to_string(server.port()), tls, "test");
}

std::shared_ptr<grpc::Channel> AdminChannel(const StipServer& server) {
  TlsOptions tls;
  tls.insecure = true;
  return MakeChannel("127.0.0.1:" + std::to_string(server.admin_port()), tls, "test");
}

// A session stream; Open signs a token for the instance unless given one.
class Session : public test::SessionClient {
 public:
  using SessionClient::SessionClient;

  grpc::Status Open(const std::string& id, v1::SessionOpened* opened = nullptr,
                    const std::string& token = kValidToken, int64_t max_context = 0,
                    const v1::LogitsFormat& logits = {}) {
    v1::OpenSession open;
    open.set_instance_id(id);
    open.set_access_token(token == kValidToken ? TokenFor(id) : token);
    open.set_max_context(max_context);
    *open.mutable_logits() = logits;
    return SessionClient::Open(open, opened);
  }

  std::optional<v1::SessionResponse> Step(uint64_t step_id, const at::Tensor& x, bool all = false,
                                          int64_t truncate_to = -1) {
    return SessionClient::Step(step_id, x, all, truncate_to);
  }
};

// o = o'[..., argsort(p_c)] of a step's result.
at::Tensor Logits(const Prepared& p, const std::optional<v1::SessionResponse>& r) {
  if (!r || !r->has_result()) {
    ADD_FAILURE() << "expected a step result, got "
                  << (r ? r->ShortDebugString() : std::string("the end of the stream"));
    return at::Tensor();
  }
  at::Tensor o = FromWire(r->result().logits());
  EXPECT_EQ(r->result().logits().datatype(), "FP32");
  return UnpermuteLogits(o, p.keys.p_c);
}

void ExpectStepError(const std::optional<v1::SessionResponse>& r, uint64_t step_id,
                     grpc::StatusCode code, const std::string& needle) {
  ASSERT_TRUE(r.has_value()) << "the session ended instead of reporting step " << step_id;
  ASSERT_TRUE(r->has_error()) << r->ShortDebugString();
  EXPECT_EQ(r->error().step_id(), step_id);
  EXPECT_EQ(r->error().status().code(), static_cast<int>(code)) << r->error().status().message();
  EXPECT_NE(r->error().status().message().find(needle), std::string::npos)
      << r->error().status().message();
}

// A prompt and decode tokens: prefill (all logits) then one token per step;
// checks every step's logits against the plain model.
void RunAndCheck(Session& s, const Prepared& p, const Ids& prompt, const Ids& decode,
                 uint64_t first_step_id = 1) {
  KvCache cache = p.plain.server->NewCache();
  at::Tensor want = p.Plain(cache, prompt, /*all=*/true);
  auto r = s.Step(first_step_id, p.Input(prompt, 0), /*all=*/true);
  at::Tensor got = Logits(p, r);
  ASSERT_TRUE(got.defined());
  EXPECT_EQ(r->result().step_id(), first_step_id);
  EXPECT_EQ(r->result().context_length(), static_cast<int64_t>(prompt.size()));
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_LE(MaxAbsDiff(got, want), kTolerance);
  int64_t pos = static_cast<int64_t>(prompt.size());
  for (size_t i = 0; i < decode.size(); ++i) {
    want = p.Plain(cache, {decode[i]}, false);
    r = s.Step(first_step_id + 1 + i, p.Input({decode[i]}, pos), false);
    got = Logits(p, r);
    ASSERT_TRUE(got.defined());
    ++pos;
    EXPECT_EQ(r->result().context_length(), pos);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LE(MaxAbsDiff(got, want), kTolerance) << "decode step " << i;
  }
}

// ---- the suite -----------------------------------------------------------------

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new TempDir("stip-server-test");
    // llama in several shards (the upload carries the index), gpt2 in one file.
    llama_ = Prepare("llama", root_->path(), 128 << 10).release();
    gpt2_ = Prepare("gpt2", root_->path(), 0).release();
  }
  static void TearDownTestSuite() {
    delete llama_;
    delete gpt2_;
    delete root_;
  }

  void TearDown() override { server_.reset(); }

  ServerOptions Options() const {
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.admin.listen = "127.0.0.1:0";
    o.tls.insecure = true;
    o.store.dir = store_;
    o.store.device = "cpu";
    o.store.dtype = "float32";
    o.inference.idle_timeout_s = 0;
    return o;
  }
  void Start(const ServerOptions& o) {
    server_.reset();
    server_ = std::make_unique<StipServer>(o);
    channel_ = Channel(*server_);
    admin_ = AdminChannel(*server_);
  }
  void Start() { Start(Options()); }
  std::string ModelsDir() const { return JoinPath(store_, "models"); }

  // Upload, then register the developer's token key (as stip-developer does).
  void UploadOk(const Prepared& p) {
    v1::ModelInfo info;
    grpc::Status s = Upload(admin_, p.server_dir, p.instance_id, &info);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(info.instance_id(), p.instance_id);
    EXPECT_TRUE(info.loaded());
    EXPECT_EQ(info.token_key_id(), "");
    RegisterKey(p.instance_id);
  }
  void RegisterKey(const std::string& id) {
    grpc::Status s = SetAccess(admin_, id, DeveloperKey().public_key().pem());
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  static TempDir* root_;
  static Prepared* llama_;
  static Prepared* gpt2_;
  TempDir store_dir_{"stip-server-test"};
  const std::string store_ = store_dir_.path();
  std::unique_ptr<StipServer> server_;
  std::shared_ptr<grpc::Channel> channel_;  // public port: Inference
  std::shared_ptr<grpc::Channel> admin_;    // admin port: ModelStore
};

TempDir* ServerTest::root_ = nullptr;
Prepared* ServerTest::llama_ = nullptr;
Prepared* ServerTest::gpt2_ = nullptr;

const Ids kPromptA = {1, 17, 42, 99, 256, 7, 300};
const Ids kPromptB = {1, 5, 400, 11};

TEST_F(ServerTest, UploadThenSessionEqualsPlainModel) {
  ServerOptions o = Options();
  o.inference.record_inputs_dir = JoinPath(store_, "recorded");
  Start(o);
  v1::ModelInfo info;
  grpc::Status s = Upload(admin_, llama_->server_dir, llama_->instance_id, &info);
  ASSERT_TRUE(s.ok()) << s.error_message();
  RegisterKey(llama_->instance_id);
  EXPECT_TRUE(info.loaded());
  EXPECT_EQ(info.model_type(), "llama");
  EXPECT_EQ(info.hidden_size(), llama_->hidden);
  EXPECT_EQ(info.vocab_size(), llama_->plain.server->config().vocab_size);
  EXPECT_EQ(info.datatype(), "FP32");
  EXPECT_GT(info.stored_bytes(), 0u);
  auto models = Models(admin_);
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0].instance_id(), llama_->instance_id);

  Session session(channel_);
  v1::SessionOpened opened;
  s = session.Open(llama_->instance_id, &opened);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(opened.instance_id(), llama_->instance_id);
  EXPECT_EQ(opened.hidden_size(), llama_->hidden);
  EXPECT_EQ(opened.max_context(), llama_->plain.server->config().max_positions);
  EXPECT_EQ(opened.datatype(), "FP32");
  EXPECT_EQ(opened.session_id().size(), 32u);
  RunAndCheck(session, *llama_, kPromptA, {3, 77, 120, 5});
  EXPECT_EQ(server_->inference().active_sessions(), 1);

  // Roll back to 3 positions and continue from there (truncate_to).
  KvCache cache = llama_->plain.server->NewCache();
  llama_->Plain(cache, Ids(kPromptA.begin(), kPromptA.begin() + 3), true);
  at::Tensor want = llama_->Plain(cache, {50, 60}, true);
  auto r = session.Step(100, llama_->Input({50, 60}, 3), true, /*truncate_to=*/3);
  at::Tensor got = Logits(*llama_, r);
  ASSERT_TRUE(got.defined());
  EXPECT_EQ(r->result().context_length(), 5);
  EXPECT_LE(MaxAbsDiff(got, want), kTolerance);
  EXPECT_TRUE(session.Close().ok());

  // The observation point holds x' (permuted), never x.
  const std::string rec =
      JoinPath(o.inference.record_inputs_dir, opened.session_id() + ".safetensors");
  struct stat st;
  ASSERT_EQ(stat(rec.c_str(), &st), 0) << rec;
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto file = SafetensorsFile::Open(rec);
  const TensorInfo& ti = file->Get("hidden");
  at::Tensor recorded = LoadTensor(TensorRef{&ti, file->Data(ti), file.get()});
  EXPECT_EQ(MaxAbsDiff(recorded, llama_->Input(kPromptA, 0)), 0.0);
  EXPECT_GT(MaxAbsDiff(recorded, llama_->client->Embed(kPromptA, 0)), 1e-3);

  // The session's resources are released with its stream.
  for (int i = 0; i < 200 && server_->inference().active_sessions() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_->inference().active_sessions(), 0);
  EXPECT_EQ(server_->inference().kv_reserved_bytes(), 0);
}

// The logits formats against the Hugging Face reference: FP16 rounds each
// value to FP16, TOP_K carries exactly the K largest entries of each row (and
// which they are, in o''s permuted order) in 8 bytes each. Bad formats are
// refused at open, and the server goes on serving.
// Inference.Encode is for encoders: on a causal model it is refused before
// any work, naming why (the encoder side is in encoder_deployment_test).
TEST_F(ServerTest, EncodeOnACausalModelIsFailedPrecondition) {
  Start();
  UploadOk(*gpt2_);
  auto stub = v1::Inference::NewStub(channel_);
  v1::EncodeRequest req;
  req.set_instance_id(gpt2_->instance_id);
  req.set_access_token(TokenFor(gpt2_->instance_id));
  ToWire(gpt2_->Input(kPromptB, 0), req.add_sequences());
  v1::EncodeResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = stub->Encode(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("causal language model"), std::string::npos)
      << s.error_message();
  // The token is checked first, as for sessions.
  req.set_access_token("forged");
  grpc::ClientContext ctx2;
  EXPECT_EQ(stub->Encode(&ctx2, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(server_->inference().active_sessions(), 0);
}

TEST_F(ServerTest, LogitsFormatsAgainstTransformers) {
  Start();
  UploadOk(*llama_);
  const std::string ref_dir = FixtureDir("llama");
  const at::Tensor ids = test::Reference(ref_dir, "input_ids")[0];  // [T]
  const at::Tensor want = test::Reference(ref_dir, "logits")[0];    // [T, vocab] (HF, fp32)
  const Ids prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.size(0));
  const int64_t t = ids.size(0), vocab = want.size(1);
  auto format = [](v1::LogitsFormat::Kind kind, int64_t k = 0) {
    v1::LogitsFormat f;
    f.set_kind(kind);
    f.set_top_k(k);
    return f;
  };

  {  // FP16: every value, rounded to FP16 (this server computes in FP32).
    Session s(channel_);
    v1::SessionOpened opened;
    ASSERT_TRUE(
        s.Open(llama_->instance_id, &opened, kValidToken, 0, format(v1::LogitsFormat::FP16)).ok());
    EXPECT_EQ(opened.logits().kind(), v1::LogitsFormat::FP16);
    auto r = s.Step(1, llama_->Input(prompt, 0), /*all=*/true);
    ASSERT_TRUE(r && r->has_result()) << (r ? r->ShortDebugString() : "stream ended");
    EXPECT_EQ(r->result().logits().datatype(), "FP16");
    EXPECT_EQ(r->result().logits().data().size(), static_cast<size_t>(t * vocab * 2));
    EXPECT_FALSE(r->result().has_logits_indices());
    at::Tensor got =
        UnpermuteLogits(FromWire(r->result().logits()).to(at::kFloat), llama_->keys.p_c);
    // FP16 keeps 11 significant bits: relative error <= 2^-11, plus the
    // engine's own tolerance against transformers.
    at::Tensor bound = want.abs() * (1.0 / 2048) + kHfTolerance;
    EXPECT_TRUE((got - want).abs().le(bound).all().item<bool>())
        << "max error " << MaxAbsDiff(got, want);
  }
  {  // TOP_K 8: the reference's 8 largest of every row, by value and identity.
    const int64_t k = 8;
    Session s(channel_);
    v1::SessionOpened opened;
    ASSERT_TRUE(
        s.Open(llama_->instance_id, &opened, kValidToken, 0, format(v1::LogitsFormat::TOP_K, k))
            .ok());
    EXPECT_EQ(opened.logits().kind(), v1::LogitsFormat::TOP_K);
    EXPECT_EQ(opened.logits().top_k(), k);
    auto r = s.Step(1, llama_->Input(prompt, 0), /*all=*/true);
    ASSERT_TRUE(r && r->has_result()) << (r ? r->ShortDebugString() : "stream ended");
    const v1::StepResult& res = r->result();
    EXPECT_EQ(res.logits().datatype(), "FP32");
    EXPECT_EQ(res.logits_indices().datatype(), "INT32");
    EXPECT_EQ(res.logits().data().size() + res.logits_indices().data().size(),
              static_cast<size_t>(t * k * 8));
    at::Tensor values = FromWire(res.logits()), idx = FromWire(res.logits_indices());
    ASSERT_EQ(values.sizes(), (std::vector<int64_t>{t, k}));
    ASSERT_EQ(idx.sizes(), (std::vector<int64_t>{t, k}));
    // o'[j] = o[p_c[j]]: the plain vocabulary id of permuted entry j is p_c[j].
    at::Tensor p_c = at::tensor(at::ArrayRef<int64_t>(llama_->keys.p_c), at::kLong);
    at::Tensor plain_ids = p_c.index_select(0, idx.reshape({-1}).to(at::kLong)).view({t, k});
    auto [want_values, want_ids] = want.topk(k, -1);
    EXPECT_TRUE(std::get<0>(plain_ids.sort(-1)).equal(std::get<0>(want_ids.sort(-1))))
        << plain_ids << want_ids;
    EXPECT_LE(MaxAbsDiff(values, want_values), kHfTolerance);
    // Decoded as the client does: -inf elsewhere, the same argmax as transformers.
    at::Tensor dense = UnpermuteLogits(
        DecodeLogits(res, LogitsFormat{LogitsFormat::Kind::kTopK, k}, t, vocab), llama_->keys.p_c);
    EXPECT_TRUE(dense.argmax(-1).equal(want.argmax(-1)));
    EXPECT_EQ(dense.isinf().sum().item<int64_t>(), t * (vocab - k));
    // A decode step after it, one row.
    r = s.Step(2, llama_->Input({5}, t), false);
    ASSERT_TRUE(r && r->has_result());
    EXPECT_EQ(FromWire(r->result().logits()).sizes(), (std::vector<int64_t>{1, k}));
  }
  struct Bad {
    v1::LogitsFormat format;
    std::string needle;
  };
  const std::vector<Bad> bad = {
      {format(v1::LogitsFormat::TOP_K, 0), "top_k in 1.." + std::to_string(vocab)},
      {format(v1::LogitsFormat::TOP_K, vocab + 1), "top_k in 1.." + std::to_string(vocab)},
      {format(v1::LogitsFormat::FP16, 4), "takes no top_k"},
      {format(static_cast<v1::LogitsFormat::Kind>(7)), "unknown logits format kind 7"},
  };
  for (const Bad& b : bad) {
    Session s(channel_);
    grpc::Status st = s.Open(llama_->instance_id, nullptr, kValidToken, 0, b.format);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << b.needle;
    EXPECT_NE(st.error_message().find(b.needle), std::string::npos) << st.error_message();
  }
  // Nothing held by the refused opens; an FP32 session is exact as ever.
  EXPECT_EQ(server_->inference().active_sessions(), 0);
  Session s(channel_);
  ASSERT_TRUE(s.Open(llama_->instance_id).ok());
  RunAndCheck(s, *llama_, prompt, {3, 4});
}

TEST_F(ServerTest, Gpt2LearnedPositionsThroughTheServer) {
  Start();
  UploadOk(*gpt2_);
  Session session(channel_);
  ASSERT_TRUE(session.Open(gpt2_->instance_id).ok());
  RunAndCheck(session, *gpt2_, kPromptB, {9, 8});
  EXPECT_TRUE(session.Close().ok());
}

// Two sessions on two threads, stepping in lock-step, so that the scheduler
// gets both steps together: at least one forward pass must be batched, and
// both sessions must still get exactly the plain model's logits.
// Twice: sessions with a growing cache each, then (server restarted on the
// same store) with a preallocated KV pool of two slots, where the decode
// steps of both sessions run as one pooled attention and a third session
// finds no slot.
TEST_F(ServerTest, ConcurrentSessionsAreBatchedAndCorrect) {
  for (int64_t pool : {0, 2}) {
    SCOPED_TRACE(pool ? "KV pool of 2 sequences" : "a cache per session");
    ServerOptions o = Options();
    o.store.batch_wait_us = 500000;  // the window closes as soon as both steps are in
    o.store.kv_pool_sequences = pool;
    o.store.max_context = 64;
    Start(o);
    if (pool == 0) {
      UploadOk(*llama_);
    } else {
      RegisterKey(llama_->instance_id);
    }

    struct Plan {
      Ids prompt, decode;
      std::vector<at::Tensor> inputs, want;
    };
    std::vector<Plan> plans = {{kPromptA, {3, 77, 120, 5}, {}, {}},
                               {kPromptB, {400, 2, 9, 31}, {}, {}}};
    for (Plan& plan : plans) {  // references computed up front, on this thread
      KvCache cache = llama_->plain.server->NewCache();
      plan.inputs.push_back(llama_->Input(plan.prompt, 0));
      plan.want.push_back(llama_->Plain(cache, plan.prompt, false));
      for (int64_t id : plan.decode) {
        plan.inputs.push_back(llama_->Input({id}, cache.length()));
        plan.want.push_back(llama_->Plain(cache, {id}, false));
      }
    }

    std::mutex mu;
    std::condition_variable cv;
    int arrived = 0, generation = 0;
    bool third_done = false;
    auto barrier = [&] {
      std::unique_lock<std::mutex> lock(mu);
      const int gen = generation;
      if (++arrived == 2) {
        arrived = 0;
        ++generation;
        cv.notify_all();
      } else {
        cv.wait(lock, [&] { return generation != gen; });
      }
    };
    std::vector<double> worst(plans.size(), -1);
    std::vector<std::string> failures(plans.size());
    auto run = [&](size_t k) {
      Session s(channel_);
      grpc::Status st = s.Open(llama_->instance_id);
      barrier();
      if (pool) {  // both hold their slot until the third session was refused
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return third_done; });
      }
      if (!st.ok()) {
        failures[k] = "open: " + st.error_message();
        for (size_t i = 0; i < plans[k].inputs.size(); ++i) barrier();
        return;
      }
      double w = 0;
      for (size_t i = 0; i < plans[k].inputs.size(); ++i) {
        barrier();
        auto r = s.Step(i, plans[k].inputs[i]);
        if (!r || !r->has_result()) {
          failures[k] = "step " + std::to_string(i) + ": " + (r ? r->ShortDebugString() : "ended");
          continue;
        }
        at::Tensor got = UnpermuteLogits(FromWire(r->result().logits()), llama_->keys.p_c);
        w = std::max(w, MaxAbsDiff(got, plans[k].want[i]));
      }
      worst[k] = w;
      s.Close();
    };
    std::thread a(run, 0), b(run, 1);
    if (pool) {  // both slots are taken once both sessions opened
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return generation >= 1; });
      lock.unlock();
      Session third(channel_);
      grpc::Status st = third.Open(llama_->instance_id);
      EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
      EXPECT_NE(st.error_message().find("--kv-pool-sequences"), std::string::npos)
          << st.error_message();
      lock.lock();
      third_done = true;
      cv.notify_all();
    }
    a.join();
    b.join();
    for (size_t k = 0; k < plans.size(); ++k) {
      EXPECT_TRUE(failures[k].empty()) << "session " << k << ": " << failures[k];
      EXPECT_GE(worst[k], 0.0);
      EXPECT_LE(worst[k], kTolerance) << "session " << k;
    }
    EXPECT_GE(server_->counters().batched_forwards.load(), 1u);
    EXPECT_EQ(server_->counters().fallbacks.load(), 0u);
  }
}

TEST_F(ServerTest, DigestMismatchIsDataLossAndStoresNothing) {
  Start();
  test::UploadPlan o = test::PlanFor(llama_->server_dir, llama_->instance_id);
  o.sha_override = std::string(64, '0');
  grpc::Status s = Upload(admin_, o);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS) << s.error_message();
  EXPECT_NE(s.error_message().find("SHA-256 mismatch"), std::string::npos) << s.error_message();
  EXPECT_TRUE(Models(admin_).empty());
  EXPECT_TRUE(ListDirectory(ModelsDir()).empty());
  Session session(channel_);
  EXPECT_EQ(session.Open(llama_->instance_id).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, InterruptedUploadLeavesNothingAndCanBeRetried) {
  Start();
  test::UploadPlan o = test::PlanFor(llama_->server_dir, llama_->instance_id);
  // Cancel the call once the server has started receiving.
  o.interrupt = [&](int index, grpc::ClientContext& ctx) {
    if (index != 3) return false;
    for (int i = 0; i < 500 && !HasTempEntry(ModelsDir()); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(HasTempEntry(ModelsDir())) << "the server never started receiving";
    ctx.TryCancel();
    return true;
  };
  grpc::Status s = Upload(admin_, o);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::CANCELLED) << s.error_message();
  // The server notices the cancellation on its own thread.
  for (int i = 0; i < 500 && !ListDirectory(ModelsDir()).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(ListDirectory(ModelsDir()).empty());
  EXPECT_TRUE(Models(admin_).empty());
  grpc::Status retry;
  for (int i = 0; i < 100; ++i) {  // until the server has forgotten the first attempt
    retry = Upload(admin_, llama_->server_dir, llama_->instance_id);
    if (retry.error_code() != grpc::StatusCode::FAILED_PRECONDITION) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(retry.ok()) << retry.error_message();
  RegisterKey(llama_->instance_id);
  Session session(channel_);
  ASSERT_TRUE(session.Open(llama_->instance_id).ok());
  RunAndCheck(session, *llama_, kPromptB, {});
}

TEST_F(ServerTest, UploadsThatAreNotTransformedServerCheckpointsAreRefused) {
  Start();
  // The server checkpoint plus the plaintext embedding table in the same file.
  const std::string bad = JoinPath(root_->path(), "with-embeddings");
  RemoveAll(bad);
  MakeDirectories(bad, 0700);
  CopyFile(JoinPath(gpt2_->server_dir, "config.json"), JoinPath(bad, "config.json"));
  {
    auto server_file = SafetensorsFile::Open(JoinPath(gpt2_->server_dir, "model.safetensors"));
    auto client_file = SafetensorsFile::Open(JoinPath(gpt2_->client_dir, "model.safetensors"));
    std::vector<TensorBytes> tensors;
    for (const auto* f : {server_file.get(), client_file.get()}) {
      for (const TensorInfo& t : f->tensors()) {
        tensors.push_back({t.name, t.dtype, t.shape, f->Data(t)});
      }
    }
    WriteSafetensors(JoinPath(bad, "model.safetensors"), tensors);
  }
  grpc::Status s = Upload(admin_, bad, gpt2_->instance_id);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("embedding"), std::string::npos) << s.error_message();

  // The client bundle by mistake (embeddings, keys).
  s = Upload(admin_, gpt2_->client_dir, gpt2_->instance_id);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();

  // A checkpoint uploaded under another instance's id.
  s = Upload(admin_, gpt2_->server_dir, llama_->instance_id);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_NE(s.error_message().find("belongs to instance"), std::string::npos) << s.error_message();

  // The plaintext model itself (no instance record, embeddings).
  s = Upload(admin_, gpt2_->fixture, gpt2_->instance_id);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();

  // Bad instance ids.
  for (const std::string& id : std::vector<std::string>{"", "../x", "a/b", std::string(65, 'a')}) {
    s = Upload(admin_, gpt2_->server_dir, id);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "id " << id;
  }
  EXPECT_TRUE(Models(admin_).empty());
  EXPECT_TRUE(ListDirectory(ModelsDir()).empty());
  // And the daemon still takes a good upload.
  UploadOk(*gpt2_);
}

TEST_F(ServerTest, FileNamesThatEscapeAreRejected) {
  Start();
  for (const std::string& name : std::vector<std::string>{"../x", "a/b", "..", ""}) {
    auto stub = v1::ModelStore::NewStub(admin_);
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    auto writer = stub->Upload(&ctx, &info);
    v1::UploadRequest req;
    req.mutable_header()->set_instance_id(llama_->instance_id);
    v1::FileEntry* f = req.mutable_header()->add_files();
    f->set_name(name);
    f->set_size(4);
    writer->Write(req);
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << name << ": " << s.error_message();
  }
  EXPECT_TRUE(ListDirectory(ModelsDir()).empty());
  EXPECT_FALSE(PathExists(JoinPath(store_, "x")));
}

// After the developer rotates its token signing key, the server takes tokens
// of the previous keys until their accepted_until (kept across restarts),
// then refuses them saying why; a bad previous key is refused.
TEST_F(ServerTest, PreviousTokenKeysAreAcceptedUntilTheirTime) {
  Start();
  UploadOk(*llama_);
  const std::string id = llama_->instance_id;
  const auth::SigningKey fresh = auth::SigningKey::Generate();
  const auth::PublicKey& old_key = DeveloperKey().public_key();
  const std::string old_token = TokenFor(id);  // signed by the previous key
  TokenSpec spec;
  spec.key = &fresh;
  const std::string new_token = TokenFor(id, spec);
  const int64_t now = auth::NowUnix();
  v1::AccessInfo info;
  grpc::Status s = SetAccess(admin_, id, fresh.public_key().pem(), {}, &info,
                             {{old_key.pem(), now + 3600}, {old_key.pem(), now - 1}});
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(info.token_key_id(), fresh.public_key().key_id());
  ASSERT_EQ(info.previous_token_key_ids_size(), 1);  // the expired entry is dropped
  EXPECT_EQ(info.previous_token_key_ids(0), old_key.key_id());
  for (const std::string& token : {old_token, new_token}) {
    Session session(channel_);
    s = session.Open(id, nullptr, token);
    ASSERT_TRUE(s.ok()) << s.error_message();
    RunAndCheck(session, *llama_, kPromptB, {});
  }
  // A restart keeps the previous key.
  Start();
  {
    Session session(channel_);
    s = session.Open(id, nullptr, old_token);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  // Its time is up: refused, and the message says the key was replaced.
  const int64_t until = auth::NowUnix() + 1;
  ASSERT_TRUE(
      SetAccess(admin_, id, fresh.public_key().pem(), {}, nullptr, {{old_key.pem(), until}}).ok());
  while (auth::NowUnix() < until) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  {
    Session session(channel_);
    s = session.Open(id, nullptr, old_token);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_NE(s.error_message().find("which the developer replaced"), std::string::npos)
        << s.error_message();
    Session ok(channel_);
    EXPECT_TRUE(ok.Open(id, nullptr, new_token).ok());
  }
  // Not an Ed25519 key; too many keys: refused, the record unchanged.
  s = SetAccess(admin_, id, fresh.public_key().pem(), {}, nullptr, {{"not a key", now + 60}});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("previous token key 0"), std::string::npos) << s.error_message();
  std::vector<std::pair<std::string, int64_t>> many(kMaxPreviousTokenKeys + 1,
                                                    {old_key.pem(), now + 60});
  s = SetAccess(admin_, id, fresh.public_key().pem(), {}, nullptr, many);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("previous token keys, at most"), std::string::npos)
      << s.error_message();
  Session after(channel_);
  EXPECT_TRUE(after.Open(id, nullptr, new_token).ok());
}

TEST_F(ServerTest, RestartServesStoredModelsAndSkipsCorruptedOnes) {
  Start();
  UploadOk(*llama_);
  UploadOk(*gpt2_);
  EXPECT_EQ(Upload(admin_, llama_->server_dir, llama_->instance_id).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);

  // Restart: both come back without an upload.
  Start();
  auto models = Models(admin_);
  ASSERT_EQ(models.size(), 2u);
  for (const auto& m : models) {
    EXPECT_TRUE(m.loaded()) << m.instance_id();
    EXPECT_EQ(m.token_key_id(), DeveloperKey().public_key().key_id()) << "access not persisted";
  }
  {
    Session session(channel_);
    ASSERT_TRUE(session.Open(gpt2_->instance_id).ok());
    RunAndCheck(session, *gpt2_, kPromptA, {4});
  }

  // Corrupt gpt2 on disk (truncated safetensors), leave a stale upload behind.
  server_.reset();
  const std::string gpt2_file =
      JoinPath(JoinPath(ModelsDir(), gpt2_->instance_id), "model.safetensors");
  struct stat st;
  ASSERT_EQ(stat(gpt2_file.c_str(), &st), 0);
  ASSERT_EQ(truncate(gpt2_file.c_str(), st.st_size / 2), 0);
  const std::string stale = JoinPath(ModelsDir(), llama_->instance_id + "x.tmp-abcdef");
  MakeDirectories(stale, 0700);
  Start();
  models = Models(admin_);
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0].instance_id(), llama_->instance_id);
  EXPECT_FALSE(PathExists(stale));
  {
    Session session(channel_);
    EXPECT_EQ(session.Open(gpt2_->instance_id).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  Session session(channel_);
  ASSERT_TRUE(session.Open(llama_->instance_id).ok());
  RunAndCheck(session, *llama_, kPromptA, {1, 2});
}

TEST_F(ServerTest, HostileStepsGetClearErrorsAndTheSessionGoesOn) {
  Start();
  UploadOk(*llama_);
  Session session(channel_);
  v1::SessionOpened opened;
  ASSERT_TRUE(session.Open(llama_->instance_id, &opened, kValidToken, /*max_context=*/16).ok());
  EXPECT_EQ(opened.max_context(), 16);
  const int64_t d = llama_->hidden;

  ExpectStepError(session.Step(1, at::randn({2, d + 1})), 1, grpc::StatusCode::INVALID_ARGUMENT,
                  "shape");
  ExpectStepError(session.Step(2, at::ones({2, d}, at::kLong)), 2,
                  grpc::StatusCode::INVALID_ARGUMENT, "FP32, FP16 or BF16");
  v1::SessionRequest r;
  r.mutable_step()->set_step_id(3);
  ToWire(at::randn({1, d}), r.mutable_step()->mutable_hidden());
  r.mutable_step()->mutable_hidden()->set_datatype("FP8");
  r.mutable_step()->set_truncate_to(-1);
  ExpectStepError(session.Send(r), 3, grpc::StatusCode::INVALID_ARGUMENT, "datatype");
  r.mutable_step()->set_step_id(4);
  ToWire(at::randn({2, d}), r.mutable_step()->mutable_hidden());
  r.mutable_step()->mutable_hidden()->mutable_data()->resize(2 * d * 4 - 3);
  ExpectStepError(session.Send(r), 4, grpc::StatusCode::INVALID_ARGUMENT, "bytes");
  r.mutable_step()->set_step_id(5);
  r.mutable_step()->mutable_hidden()->clear_shape();
  r.mutable_step()->mutable_hidden()->add_shape(std::numeric_limits<int64_t>::max());
  r.mutable_step()->mutable_hidden()->add_shape(d);
  ExpectStepError(session.Send(r), 5, grpc::StatusCode::INVALID_ARGUMENT, "");
  r.mutable_step()->set_step_id(6);
  r.mutable_step()->clear_hidden();
  ExpectStepError(session.Send(r), 6, grpc::StatusCode::INVALID_ARGUMENT, "no hidden states");
  at::Tensor nan = llama_->Input({1, 2}, 0);
  nan[1][3] = std::numeric_limits<float>::quiet_NaN();
  ExpectStepError(session.Step(7, nan), 7, grpc::StatusCode::INVALID_ARGUMENT, "NaN");
  at::Tensor inf = llama_->Input({1, 2}, 0);
  inf[0][0] = std::numeric_limits<float>::infinity();
  ExpectStepError(session.Step(8, inf), 8, grpc::StatusCode::INVALID_ARGUMENT, "infinite");
  ExpectStepError(session.Step(9, at::zeros({0, d})), 9, grpc::StatusCode::INVALID_ARGUMENT,
                  "T >= 1");
  Ids long_prompt(17, 5);
  ExpectStepError(session.Step(10, llama_->Input(long_prompt, 0)), 10,
                  grpc::StatusCode::RESOURCE_EXHAUSTED, "context limit of 16 positions");
  ExpectStepError(session.Step(11, llama_->Input({1}, 0), false, /*truncate_to=*/4), 11,
                  grpc::StatusCode::INVALID_ARGUMENT, "truncate_to");

  // None of that touched the session: it still computes exactly.
  RunAndCheck(session, *llama_, kPromptA, {3, 4}, 20);
  // Filling up to the limit works, one more position does not.
  Ids rest(16 - kPromptA.size() - 2, 8);
  auto ok = session.Step(30, llama_->Input(rest, kPromptA.size() + 2));
  ASSERT_TRUE(ok && ok->has_result()) << (ok ? ok->ShortDebugString() : "ended");
  EXPECT_EQ(ok->result().context_length(), 16);
  ExpectStepError(session.Step(31, llama_->Input({1}, 16)), 31,
                  grpc::StatusCode::RESOURCE_EXHAUSTED, "context limit of 16 positions");
  // fp16 input is accepted (converted to the compute dtype).
  auto half = session.Step(32, llama_->Input({1, 2}, 0).to(at::kHalf), false, 0);
  ASSERT_TRUE(half && half->has_result()) << (half ? half->ShortDebugString() : "ended");
  EXPECT_EQ(half->result().context_length(), 2);
  EXPECT_TRUE(session.Close().ok());
  EXPECT_EQ(server_->counters().fallbacks.load(), 0u);
}

TEST_F(ServerTest, SessionLevelErrorsEndTheStreamButNotTheDaemon) {
  Start();
  UploadOk(*llama_);
  {  // step before open
    Session s(channel_);
    v1::SessionRequest r;
    r.mutable_step()->set_step_id(1);
    ToWire(llama_->Input({1}, 0), r.mutable_step()->mutable_hidden());
    EXPECT_FALSE(s.Send(r).has_value());
    grpc::Status st = s.Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
    EXPECT_NE(st.error_message().find("open"), std::string::npos);
  }
  {  // unknown instance
    Session s(channel_);
    grpc::Status st = s.Open("0123456789abcdef0123456789abcdef");
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  }
  {  // no token
    Session s(channel_);
    grpc::Status st = s.Open(llama_->instance_id, nullptr, "");
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  }
  {  // open twice
    Session s(channel_);
    ASSERT_TRUE(s.Open(llama_->instance_id).ok());
    v1::SessionRequest r;
    r.mutable_open()->set_instance_id(llama_->instance_id);
    r.mutable_open()->set_access_token(TokenFor(llama_->instance_id));
    EXPECT_FALSE(s.Send(r).has_value());
    EXPECT_EQ(s.Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  {  // steps after close get no answer; the stream ended with OK
    Session s(channel_);
    ASSERT_TRUE(s.Open(llama_->instance_id).ok());
    v1::SessionRequest close;
    close.mutable_close();
    EXPECT_FALSE(s.Send(close).has_value());
    EXPECT_FALSE(s.Step(1, llama_->Input({1}, 0)).has_value());
    EXPECT_TRUE(s.Finish().ok());
  }
  {  // a client that vanishes mid-session
    auto s = std::make_unique<Session>(channel_);
    ASSERT_TRUE(s->Open(llama_->instance_id).ok());
    ASSERT_TRUE(s->Step(1, llama_->Input(kPromptA, 0)).has_value());
    s->context().TryCancel();
    s.reset();
  }
  Session s(channel_);
  ASSERT_TRUE(s.Open(llama_->instance_id).ok());
  RunAndCheck(s, *llama_, kPromptB, {6});
  EXPECT_TRUE(s.Close().ok());
  for (int i = 0; i < 200 && server_->inference().active_sessions() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_->inference().active_sessions(), 0);
  EXPECT_EQ(server_->inference().kv_reserved_bytes(), 0);
}

TEST_F(ServerTest, SessionAndKvLimitsAreResourceExhausted) {
  ServerOptions o = Options();
  o.inference.max_sessions = 2;
  // Room for one session's first 16 positions (the cache's smallest allocation), not two.
  const int64_t bpp = llama_->plain.server->CacheBytesPerPosition();
  o.inference.max_kv_bytes = 16 * bpp + 16 * bpp / 2;
  Start(o);
  UploadOk(*llama_);
  Session a(channel_), b(channel_);
  ASSERT_TRUE(a.Open(llama_->instance_id).ok());
  ASSERT_TRUE(b.Open(llama_->instance_id).ok());
  {
    Session c(channel_);
    grpc::Status st = c.Open(llama_->instance_id);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_NE(st.error_message().find("session limit of 2"), std::string::npos);
  }
  RunAndCheck(a, *llama_, kPromptA, {});
  ExpectStepError(b.Step(1, llama_->Input(kPromptB, 0)), 1, grpc::StatusCode::RESOURCE_EXHAUSTED,
                  "KV cache memory limit");
  EXPECT_TRUE(a.Close().ok());
  for (int i = 0; i < 200 && server_->inference().kv_reserved_bytes() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  RunAndCheck(b, *llama_, kPromptB, {2});  // the memory is free again
  Session c(channel_);
  EXPECT_TRUE(c.Open(llama_->instance_id).ok());  // and so is a session slot
}

TEST_F(ServerTest, UnloadAndDeleteWaitForSessions) {
  Start();
  UploadOk(*llama_);
  auto stub = v1::ModelStore::NewStub(admin_);
  v1::ModelRef ref;
  ref.set_instance_id(llama_->instance_id);
  auto session = std::make_unique<Session>(channel_);
  ASSERT_TRUE(session->Open(llama_->instance_id).ok());
  {
    grpc::ClientContext ctx;
    v1::DeleteModelResponse resp;
    EXPECT_EQ(stub->Delete(&ctx, ref, &resp).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_EQ(stub->Unload(&ctx, ref, &info).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  RunAndCheck(*session, *llama_, kPromptB, {1});  // unaffected
  EXPECT_TRUE(session->Close().ok());
  session.reset();
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    grpc::Status st = stub->Unload(&ctx, ref, &info);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_FALSE(info.loaded());
  }
  {
    Session s(channel_);
    EXPECT_EQ(s.Open(llama_->instance_id).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    ASSERT_TRUE(stub->Load(&ctx, ref, &info).ok());
    EXPECT_TRUE(info.loaded());
  }
  {
    grpc::ClientContext ctx;
    v1::DeleteModelResponse resp;
    grpc::Status st = stub->Delete(&ctx, ref, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_TRUE(Models(admin_).empty());
  EXPECT_TRUE(ListDirectory(ModelsDir()).empty());
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_EQ(stub->Load(&ctx, ref, &info).error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST_F(ServerTest, IdleSessionsAreEnded) {
  ServerOptions o = Options();
  o.inference.idle_timeout_s = 1;
  Start(o);
  UploadOk(*llama_);
  Session s(channel_);
  ASSERT_TRUE(s.Open(llama_->instance_id).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_FALSE(s.Step(1, llama_->Input({1}, 0)).has_value());
  grpc::Status st = s.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_EQ(server_->inference().active_sessions(), 0);
}

// ---- retirement (key rotation) ---------------------------------------------------

grpc::Status Retire(const std::shared_ptr<grpc::Channel>& admin, const std::string& id,
                    int64_t drain_seconds, v1::ModelInfo* info) {
  auto stub = v1::ModelStore::NewStub(admin);
  grpc::ClientContext ctx;
  v1::RetireRequest req;
  req.set_instance_id(id);
  req.set_drain_seconds(drain_seconds);
  return stub->Retire(&ctx, req, info);
}

std::string Reason(grpc::ClientContext& ctx) {
  for (const auto& [key, value] : ctx.GetServerTrailingMetadata()) {
    if (key == kErrorReasonKey) return std::string(value.data(), value.size());
  }
  return "";
}

// Retire: new sessions get FAILED_PRECONDITION with the INSTANCE_RETIRED
// reason; sessions already open go on until the drain deadline, then the
// server ends them (busy or idle) with the same status; the retirement
// survives a restart; afterwards the instance can be deleted.
TEST_F(ServerTest, RetiredInstancesRefuseNewSessionsAndDrainOpenOnes) {
  Start();
  UploadOk(*llama_);
  UploadOk(*gpt2_);
  Session busy(channel_), idle(channel_);
  ASSERT_TRUE(busy.Open(llama_->instance_id).ok());
  ASSERT_TRUE(idle.Open(llama_->instance_id).ok());
  v1::ModelInfo info;
  const int64_t before = auth::NowUnix();
  ASSERT_TRUE(Retire(admin_, llama_->instance_id, 2, &info).ok());
  EXPECT_TRUE(info.retired());
  EXPECT_GE(info.drain_deadline(), before + 2);
  EXPECT_LE(info.drain_deadline(), auth::NowUnix() + 2);
  EXPECT_EQ(info.active_sessions(), 2);
  // Again, later: the deadline stays.
  v1::ModelInfo again;
  ASSERT_TRUE(Retire(admin_, llama_->instance_id, 3600, &again).ok());
  EXPECT_EQ(again.drain_deadline(), info.drain_deadline());
  EXPECT_EQ(Retire(admin_, "nope", 1, &again).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Retire(admin_, gpt2_->instance_id, -1, &again).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  {
    Session s(channel_);
    grpc::Status st = s.Open(llama_->instance_id);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
    EXPECT_NE(st.error_message().find("retired"), std::string::npos) << st.error_message();
    EXPECT_EQ(Reason(s.context()), kReasonInstanceRetired);
  }
  {
    Session s(channel_);  // another instance: unaffected
    EXPECT_TRUE(s.Open(gpt2_->instance_id).ok());
  }
  RunAndCheck(busy, *llama_, kPromptB, {1});  // draining: still served

  // Past the deadline: the idle session is ended by the server, the busy one
  // at its next step.
  while (auth::NowUnix() < info.drain_deadline() + 2) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_FALSE(busy.Step(9, llama_->Input({5}, 5)).has_value());
  grpc::Status st = busy.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_EQ(Reason(busy.context()), kReasonInstanceRetired);
  st = idle.Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_EQ(Reason(idle.context()), kReasonInstanceRetired);
  EXPECT_EQ(server_->inference().active_sessions(), 0);

  // Stored with the model: still retired after a restart.
  Start();
  bool seen = false;
  for (const v1::ModelInfo& m : Models(admin_)) {
    if (m.instance_id() != llama_->instance_id) continue;
    seen = true;
    EXPECT_TRUE(m.retired());
    EXPECT_EQ(m.drain_deadline(), info.drain_deadline());
  }
  EXPECT_TRUE(seen);
  {
    Session s(channel_);
    EXPECT_EQ(s.Open(llama_->instance_id).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_EQ(Reason(s.context()), kReasonInstanceRetired);
  }
  auto stub = v1::ModelStore::NewStub(admin_);
  grpc::ClientContext ctx;
  v1::ModelRef ref;
  ref.set_instance_id(llama_->instance_id);
  v1::DeleteModelResponse resp;
  ASSERT_TRUE(stub->Delete(&ctx, ref, &resp).ok());
  EXPECT_EQ(Models(admin_).size(), 1u);
}

// ---- access tokens ---------------------------------------------------------------

TEST_F(ServerTest, AccessTokensAreCheckedBeforeAnyWork) {
  ServerOptions o = Options();
  Start(o);
  v1::ModelInfo info;
  ASSERT_TRUE(Upload(admin_, llama_->server_dir, llama_->instance_id, &info).ok());
  ASSERT_TRUE(Upload(admin_, gpt2_->server_dir, gpt2_->instance_id, &info).ok());
  const std::string& id = llama_->instance_id;
  auto open = [&](const std::string& instance, const std::string& token) {
    Session s(channel_);
    return s.Open(instance, nullptr, token);
  };
  auto expect = [&](const grpc::Status& st, grpc::StatusCode code, const std::string& needle) {
    EXPECT_EQ(st.error_code(), code) << st.error_message();
    EXPECT_NE(st.error_message().find(needle), std::string::npos) << st.error_message();
  };

  // No key registered yet: no sessions, whatever the token.
  expect(open(id, TokenFor(id)), grpc::StatusCode::FAILED_PRECONDITION, "no registered token key");
  RegisterKey(id);
  RegisterKey(gpt2_->instance_id);
  ASSERT_TRUE(open(id, TokenFor(id)).ok());

  // Forged: signed by another key; garbled; not a token at all; tampered payload.
  const auth::SigningKey mallory = auth::SigningKey::Generate();
  TokenSpec forged;
  forged.key = &mallory;
  expect(open(id, TokenFor(id, forged)), grpc::StatusCode::UNAUTHENTICATED, "signature");
  std::string good = TokenFor(id);
  std::string garbled = good;
  garbled[garbled.size() - 5] = garbled[garbled.size() - 5] == 'A' ? 'B' : 'A';
  expect(open(id, garbled), grpc::StatusCode::UNAUTHENTICATED, "");
  expect(open(id, "user-token"), grpc::StatusCode::UNAUTHENTICATED, "not a stip1 token");
  expect(open(id, "stip1.!!.??"), grpc::StatusCode::UNAUTHENTICATED, "encoded");
  expect(open(id, std::string(10000, 'a')), grpc::StatusCode::UNAUTHENTICATED, "too long");
  {
    // Another user's name in the payload, the signature kept.
    const size_t a = good.find('.'), b = good.rfind('.');
    std::string payload = *auth::Base64UrlDecode(good.substr(a + 1, b - a - 1));
    payload.replace(payload.find("alice"), 5, "admin");
    std::string tampered = good.substr(0, a + 1) + auth::Base64UrlEncode(payload) + good.substr(b);
    expect(open(id, tampered), grpc::StatusCode::UNAUTHENTICATED, "signature");
  }
  // Expired.
  TokenSpec expired;
  expired.ttl_s = -10;
  expect(open(id, TokenFor(id, expired)), grpc::StatusCode::UNAUTHENTICATED, "expired");
  // Valid signature, another instance: the gpt2 token on llama.
  expect(open(id, TokenFor(gpt2_->instance_id)), grpc::StatusCode::PERMISSION_DENIED,
         "another model instance");
  // Unknown instance: NOT_FOUND (no key to check against).
  expect(open("0123456789abcdef0123456789abcdef", TokenFor("0123456789abcdef0123456789abcdef")),
         grpc::StatusCode::NOT_FOUND, "");

  // Revoked: the developer pushes the token's id; other tokens still work.
  TokenSpec bob;
  bob.user = "bob";
  bob.token_id = auth::NewTokenId();
  const std::string bob_token = TokenFor(id, bob);
  Session bobs_session(channel_);  // opened before the revocation: it keeps running
  ASSERT_TRUE(bobs_session.Open(id, nullptr, bob_token).ok());
  v1::AccessInfo ai;
  const int64_t later = auth::NowUnix() + 3600;
  ASSERT_TRUE(SetAccess(admin_, id, DeveloperKey().public_key().pem(),
                        {{bob.token_id, later}, {auth::NewTokenId(), auth::NowUnix() - 5}}, &ai)
                  .ok());
  EXPECT_EQ(ai.revoked_tokens(), 1) << "the entry of an expired token was kept";
  EXPECT_EQ(ai.token_key_id(), DeveloperKey().public_key().key_id());
  expect(open(id, bob_token), grpc::StatusCode::PERMISSION_DENIED, "revoked");
  ASSERT_TRUE(open(id, TokenFor(id)).ok());
  // The gpt2 instance has its own list.
  TokenSpec bob_gpt2 = bob;
  EXPECT_TRUE(open(gpt2_->instance_id, TokenFor(gpt2_->instance_id, bob_gpt2)).ok());

  // Nothing was held for the refused opens: bob's early session is the only one
  // (once the sessions of the accepted opens, abandoned above, are released).
  for (int i = 0; i < 200 && server_->inference().active_sessions() > 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_->inference().active_sessions(), 1);
  RunAndCheck(bobs_session, *llama_, kPromptB, {});
  EXPECT_TRUE(bobs_session.Close().ok());

  // The revocation survives a restart.
  Start(o);
  expect(open(id, bob_token), grpc::StatusCode::PERMISSION_DENIED, "revoked");
  ASSERT_TRUE(open(id, TokenFor(id)).ok());

  // SetAccess checks what it is given.
  EXPECT_EQ(SetAccess(admin_, id, "not a key").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SetAccess(admin_, id, DeveloperKey().PrivatePem()).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(
      SetAccess(admin_, id, DeveloperKey().public_key().pem(), {{"../x", later}}).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SetAccess(admin_, "0123456789abcdef", DeveloperKey().public_key().pem()).error_code(),
            grpc::StatusCode::NOT_FOUND);
  expect(open(id, bob_token), grpc::StatusCode::PERMISSION_DENIED, "revoked");  // unchanged

  // Re-registering replaces the list (bob is back) and the key (old tokens die).
  ASSERT_TRUE(SetAccess(admin_, id, DeveloperKey().public_key().pem()).ok());
  EXPECT_TRUE(open(id, bob_token).ok());
  ASSERT_TRUE(SetAccess(admin_, id, mallory.public_key().pem()).ok());
  expect(open(id, bob_token), grpc::StatusCode::UNAUTHENTICATED, "signature");
  EXPECT_TRUE(open(id, TokenFor(id, forged)).ok());

  // An uploaded access.json is refused: access goes through SetAccess.
  const std::string with_access = JoinPath(root_->path(), "with-access");
  RemoveAll(with_access);
  MakeDirectories(with_access, 0700);
  for (const std::string& f : ListDirectory(gpt2_->server_dir)) {
    CopyFile(JoinPath(gpt2_->server_dir, f), JoinPath(with_access, f));
  }
  WriteFileAtomic(JoinPath(with_access, "access.json"), "{}", 0600);
  ServerOptions fresh = Options();
  fresh.store.dir = JoinPath(store_, "fresh");
  Start(fresh);
  grpc::Status up = Upload(admin_, with_access, gpt2_->instance_id);
  EXPECT_EQ(up.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << up.error_message();
  EXPECT_NE(up.error_message().find("SetAccess"), std::string::npos) << up.error_message();
}

// The public port serves no ModelStore; the admin port serves no sessions.
TEST_F(ServerTest, ModelStoreIsOnTheAdminPortOnly) {
  Start();
  auto stub = v1::ModelStore::NewStub(channel_);
  grpc::ClientContext ctx;
  v1::ListModelsResponse resp;
  EXPECT_EQ(stub->List(&ctx, v1::ListModelsRequest(), &resp).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(Upload(channel_, llama_->server_dir, llama_->instance_id).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  UploadOk(*llama_);
  Session wrong_port(admin_);
  EXPECT_EQ(wrong_port.Open(llama_->instance_id).error_code(), grpc::StatusCode::UNIMPLEMENTED);
  Session s(channel_);
  EXPECT_TRUE(s.Open(llama_->instance_id).ok());

  // Without an admin port nothing can change the store.
  ServerOptions o = Options();
  o.admin.listen.clear();
  server_.reset();
  server_ = std::make_unique<StipServer>(o);
  EXPECT_EQ(server_->admin_port(), 0);
  EXPECT_EQ(server_->admin_address(), "");
}

// ---- TLS ---------------------------------------------------------------------

TEST_F(ServerTest, TlsEndToEndAndOnlyTheDevelopersCertificateChangesTheStore) {
  // The demo PKI: a CA, the server's certificate, the developer's client
  // certificate (CN stip-developer), another client certificate of the same CA
  // (CN stip-client); and, as "impostor", the developer's certificate of an
  // unrelated CA (CN stip-developer).
  TempDir pki("stip-server-pki"), other("stip-server-pki");
  const std::string& dir = pki.path();
  test::MakeDemoPki(dir);
  test::MakeDemoPki(other.path());
  CopyFile(other / "developer.pem", pki / "impostor.pem");
  CopyFile(other / "developer.key", pki / "impostor.key");
  ServerOptions o = Options();
  o.tls.insecure = false;
  o.tls.cert_file = JoinPath(dir, "server.pem");
  o.tls.key_file = JoinPath(dir, "server.key");
  o.admin.ca_file = JoinPath(dir, "ca.pem");
  o.admin.allowed_common_names = {"stip-developer"};
  server_ = std::make_unique<StipServer>(o);
  auto tls_channel = [&](int port, const std::string& cert) {
    return test::PkiChannel(dir, port, cert);
  };
  const int admin_port = server_->admin_port();

  // TLS without a client certificate: the handshake fails, nothing is stored.
  {
    auto ch = tls_channel(admin_port, "");
    EXPECT_EQ(ListModels(ch).error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_FALSE(Upload(ch, llama_->server_dir, llama_->instance_id).ok());
    EXPECT_FALSE(SetAccess(ch, llama_->instance_id, DeveloperKey().public_key().pem()).ok());
  }
  // A certificate of another CA, even with the developer's name.
  EXPECT_EQ(ListModels(tls_channel(admin_port, "impostor")).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // The same CA, another name (the client's certificate): PERMISSION_DENIED.
  {
    auto ch = tls_channel(admin_port, "client");
    grpc::Status st = ListModels(ch);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
    EXPECT_NE(st.error_message().find("stip-client"), std::string::npos) << st.error_message();
    st = Upload(ch, llama_->server_dir, llama_->instance_id);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  }
  // Plaintext gets nowhere, on either port.
  {
    TlsOptions plain;
    plain.insecure = true;
    EXPECT_FALSE(
        ListModels(MakeChannel("127.0.0.1:" + std::to_string(admin_port), plain, "t")).ok());
    EXPECT_FALSE(
        ListModels(MakeChannel("127.0.0.1:" + std::to_string(server_->port()), plain, "t")).ok());
  }
  // A TLS client of the public port: no ModelStore there.
  EXPECT_EQ(ListModels(tls_channel(server_->port(), "")).error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_EQ(Upload(tls_channel(server_->port(), ""), llama_->server_dir, llama_->instance_id)
                .error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_TRUE(ListDirectory(ModelsDir()).empty());

  // The developer can; then a TLS client (no certificate) runs a session.
  admin_ = tls_channel(admin_port, "developer");
  channel_ = tls_channel(server_->port(), "");
  UploadOk(*llama_);
  Session s(channel_);
  ASSERT_TRUE(s.Open(llama_->instance_id).ok());
  RunAndCheck(s, *llama_, kPromptA, {10});
  EXPECT_TRUE(s.Close().ok());
  server_.reset();

  // Any certificate of the admin CA when no names are listed.
  o.admin.allowed_common_names.clear();
  server_ = std::make_unique<StipServer>(o);
  EXPECT_TRUE(ListModels(tls_channel(server_->admin_port(), "client")).ok());
  // An admin port without its CA is refused at start-up.
  o.admin.ca_file.clear();
  server_.reset();
  EXPECT_THROW(StipServer bad(o), Error);
}

}  // namespace
}  // namespace stip
