// Hostile input against a real stip-server (in process, real gRPC over
// loopback with TLS on both ports, mutual TLS on the admin port): malformed
// session messages and tensors, truncated and inconsistent uploads, and
// corrupted models on disk at start-up. Each case must get a clear error (a
// status code and a message naming the problem), and after each one a
// bystander session opened before it and a fresh session opened after it
// must both still get exactly the plain model's logits.
//
// server_test.cc covers the basic step checks (wrong hidden size, dtype,
// byte count, NaN/Inf, zero positions, context limit, steps after close);
// this suite adds what a hostile peer can do beyond them.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/auth/access_token.h"
#include "common/client/client_permuter.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/format/safetensors.h"
#include "common/keys/model_keys.h"
#include "common/rpc/file_transfer.h"
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
using test::TempDir;
using Ids = std::vector<int64_t>;
using Code = grpc::StatusCode;

constexpr double kTolerance = 1e-5;
const Ids kPrompt = {1, 17, 42, 99, 256, 7, 300};

using test::DeveloperKey;
using test::PlanFor;
using test::Prepare;
using test::Prepared;
using test::TokenFor;
using test::Upload;
using test::UploadPlan;

// ---- raw and typed calls -------------------------------------------------------

// Sends `frames` as the messages of a call, whatever bytes they are, and
// returns the call's status (the answers are read and dropped).
grpc::Status RawBidi(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                     const std::vector<std::string>& frames, int* answers = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::internal::RpcMethod rpc(method.c_str(), grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> call(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(), rpc, &ctx));
  for (const std::string& f : frames) {
    grpc::Slice slice(f);
    grpc::ByteBuffer buf(&slice, 1);
    if (!call->Write(buf)) break;
  }
  call->WritesDone();
  grpc::ByteBuffer ignored;
  int n = 0;
  while (call->Read(&ignored)) ++n;
  if (answers) *answers = n;
  return call->Finish();
}

grpc::Status RawClientStream(const std::shared_ptr<grpc::Channel>& channel,
                             const std::string& method, const std::vector<std::string>& frames) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::internal::RpcMethod rpc(method.c_str(), grpc::internal::RpcMethod::CLIENT_STREAMING);
  grpc::ByteBuffer response;
  std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> call(
      grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel.get(), rpc, &ctx,
                                                                    &response));
  for (const std::string& f : frames) {
    grpc::Slice slice(f);
    grpc::ByteBuffer buf(&slice, 1);
    if (!call->Write(buf)) break;
  }
  call->WritesDone();
  return call->Finish();
}

// A session stream (60 s for everything): steps never ask for all logits.
class Session : public test::SessionClient {
 public:
  explicit Session(const std::shared_ptr<grpc::Channel>& channel)
      : SessionClient(channel, std::chrono::seconds(60)) {}

  grpc::Status Open(const std::string& id, const std::string& token, int64_t max_context = 0) {
    v1::OpenSession open;
    open.set_instance_id(id);
    open.set_access_token(token);
    open.set_max_context(max_context);
    return SessionClient::Open(open);
  }

  std::optional<v1::SessionResponse> Step(uint64_t step_id, const v1::Tensor& hidden,
                                          int64_t truncate_to = -1) {
    return SessionClient::Step(step_id, hidden, false, truncate_to);
  }
  std::optional<v1::SessionResponse> Step(uint64_t step_id, const at::Tensor& x,
                                          int64_t truncate_to = -1) {
    return SessionClient::Step(step_id, x, false, truncate_to);
  }
};

// A status message a person can read: bounded, no raw control characters.
void ExpectReadable(const std::string& message) {
  EXPECT_FALSE(message.empty());
  EXPECT_LT(message.size(), 600u) << message.substr(0, 600);
  for (unsigned char c : message) {
    ASSERT_TRUE(c >= 0x20 && c != 0x7f) << "control character in \"" << message << "\"";
  }
}

void ExpectStatus(const grpc::Status& s, Code code, const std::string& needle) {
  EXPECT_EQ(s.error_code(), code) << s.error_message();
  EXPECT_NE(s.error_message().find(needle), std::string::npos)
      << "\"" << needle << "\" not in: " << s.error_message();
  ExpectReadable(s.error_message());
}

void ExpectStepError(const std::optional<v1::SessionResponse>& r, uint64_t step_id, Code code,
                     const std::string& needle) {
  ASSERT_TRUE(r.has_value()) << "the session ended instead of reporting step " << step_id;
  ASSERT_TRUE(r->has_error()) << r->ShortDebugString().substr(0, 300);
  EXPECT_EQ(r->error().step_id(), step_id);
  ExpectStatus(
      grpc::Status(static_cast<Code>(r->error().status().code()), r->error().status().message()),
      code, needle);
}

grpc::Status SetAccess(const std::shared_ptr<grpc::Channel>& admin, const std::string& id) {
  return test::SetAccess(admin, id, DeveloperKey().public_key().pem());
}

std::vector<std::string> ListIds(const std::shared_ptr<grpc::Channel>& admin) {
  std::vector<std::string> ids;
  for (const v1::ModelInfo& m : test::Models(admin)) ids.push_back(m.instance_id());
  return ids;
}

// A copy of a checkpoint directory to break.
std::string CopyDir(const std::string& from, const std::string& to) {
  RemoveAll(to);
  MakeDirectories(to, 0700);
  for (const std::string& name : ListDirectory(from)) {
    CopyFile(JoinPath(from, name), JoinPath(to, name));
  }
  return to;
}

void EditJson(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(ReadFile(path));
  edit(j);
  WriteFileAtomic(path, j.dump(2));
}

// Rewrites a safetensors file with `edit` applied to its tensor list.
void EditTensors(const std::string& path,
                 const std::function<void(std::vector<TensorBytes>&)>& edit) {
  auto file = SafetensorsFile::Open(path);
  std::vector<TensorBytes> tensors;
  for (const TensorInfo& t : file->tensors()) {
    tensors.push_back({t.name, t.dtype, t.shape, file->Data(t)});
  }
  edit(tensors);
  const std::string tmp = path + ".new";
  WriteSafetensors(tmp, tensors);
  file.reset();
  RenamePath(tmp, path);
}

// Overwrites bytes of a file in place.
void Patch(const std::string& path, size_t offset, const std::string& bytes) {
  std::string content = ReadFile(path);
  ASSERT_LE(offset + bytes.size(), content.size());
  content.replace(offset, bytes.size(), bytes);
  WriteFileAtomic(path, content);
}

// The daemon's log, captured to check what it reports (thread-safe: the
// server logs from its own threads).
class CapturingSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string Contents() {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_;
  }
  void Clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    text_.clear();
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t formatted;
    formatter_->format(msg, formatted);
    text_.append(formatted.data(), formatted.size());
  }
  void flush_() override {}

 private:
  std::string text_;
};

// ---- the suite -------------------------------------------------------------------

class HostileInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new TempDir("stip-hostile");
    pki_ = JoinPath(root_->path(), "pki");
    test::MakeDemoPki(pki_);
    llama_ = Prepare("llama", root_->path(), 128 << 10).release();  // sharded, with an index
    gpt2_ = Prepare("gpt2", root_->path(), 0).release();            // one file
    reference_ = new at::Tensor(llama_->Plain(kPrompt));
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete llama_;
    delete gpt2_;
    delete root_;
  }

  void SetUp() override {
    store_ = std::make_unique<TempDir>("stip-hostile-store");
    sink_ = std::make_shared<CapturingSink>();
    spdlog::default_logger()->sinks().push_back(sink_);
    Start();
    UploadOk(*llama_);
    OpenBystander();
  }
  void TearDown() override {
    bystander_.reset();
    server_.reset();
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
  }

  void Start() {
    bystander_.reset();
    server_.reset();
    ServerOptions o;
    o.listen = "127.0.0.1:0";
    o.admin.listen = "127.0.0.1:0";
    o.tls.cert_file = JoinPath(pki_, "server.pem");
    o.tls.key_file = JoinPath(pki_, "server.key");
    o.admin.ca_file = JoinPath(pki_, "ca.pem");
    o.admin.allowed_common_names = {"stip-developer"};
    o.store.dir = store_->path();
    o.store.device = "cpu";
    o.store.dtype = "float32";
    o.inference.idle_timeout_s = 0;
    server_ = std::make_unique<StipServer>(o);
    channel_ = test::PkiChannel(pki_, server_->port());
    admin_ = test::PkiChannel(pki_, server_->admin_port(), "developer");
  }
  std::string ModelsDir() const { return JoinPath(store_->path(), "models"); }

  void UploadOk(const Prepared& p) {
    grpc::Status s = Upload(admin_, PlanFor(p.server_dir, p.instance_id));
    ASSERT_TRUE(s.ok()) << s.error_message();
    s = SetAccess(admin_, p.instance_id);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  void OpenBystander() {
    bystander_ = std::make_unique<Session>(channel_);
    grpc::Status s = bystander_->Open(llama_->instance_id, TokenFor(llama_->instance_id));
    ASSERT_TRUE(s.ok()) << s.error_message();
  }

  // The daemon still serves everyone else: the bystander session (opened
  // before the hostile input) and a session opened now both compute exactly.
  void ExpectOthersServed(const std::string& after) {
    SCOPED_TRACE("after: " + after);
    ASSERT_TRUE(bystander_) << "no bystander session";
    const at::Tensor x = llama_->Input(kPrompt, 0);
    auto check = [&](Session& s, uint64_t step_id, const char* who) {
      auto r = s.Step(step_id, x, /*truncate_to=*/0);
      ASSERT_TRUE(r && r->has_result())
          << who << ": " << (r ? r->ShortDebugString().substr(0, 300) : "the stream ended");
      at::Tensor got = UnpermuteLogits(FromWire(r->result().logits()), llama_->keys.p_c);
      ASSERT_EQ(got.sizes(), reference_->sizes()) << who;
      EXPECT_LE(MaxAbsDiff(got, *reference_), kTolerance) << who;
      EXPECT_EQ(r->result().context_length(), static_cast<int64_t>(kPrompt.size())) << who;
    };
    check(*bystander_, ++bystander_steps_, "bystander session");
    Session fresh(channel_);
    grpc::Status s = fresh.Open(llama_->instance_id, TokenFor(llama_->instance_id));
    ASSERT_TRUE(s.ok()) << "fresh session: " << s.error_message();
    check(fresh, 1, "fresh session");
    EXPECT_TRUE(fresh.Close().ok());
  }

  // Every hostile stream has given back its session slot and KV memory.
  void ExpectOnlyBystanderLeft() {
    for (int i = 0; i < 300 && server_->inference().active_sessions() > 1; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(server_->inference().active_sessions(), 1);
  }

  // Nothing but the good model is stored, nothing half-written is left.
  void ExpectStoreUntouched() {
    EXPECT_EQ(ListIds(admin_), std::vector<std::string>{llama_->instance_id});
    std::vector<std::string> entries;
    for (int i = 0; i < 200; ++i) {  // the server removes a failed upload on its own thread
      entries = ListDirectory(ModelsDir());
      if (entries.size() == 1) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(entries, std::vector<std::string>{llama_->instance_id});
  }

  std::string Log() const { return sink_->Contents(); }

  static TempDir* root_;
  static std::string pki_;
  static Prepared* llama_;
  static Prepared* gpt2_;
  static at::Tensor* reference_;
  std::unique_ptr<TempDir> store_;
  std::unique_ptr<StipServer> server_;
  std::shared_ptr<grpc::Channel> channel_, admin_;
  std::unique_ptr<Session> bystander_;
  uint64_t bystander_steps_ = 0;
  std::shared_ptr<CapturingSink> sink_;
};

TempDir* HostileInputTest::root_ = nullptr;
std::string HostileInputTest::pki_;
Prepared* HostileInputTest::llama_ = nullptr;
Prepared* HostileInputTest::gpt2_ = nullptr;
at::Tensor* HostileInputTest::reference_ = nullptr;

// ---- the session stream ------------------------------------------------------------

TEST_F(HostileInputTest, MalformedSessionMessagesEndOnlyTheirOwnStream) {
  const std::string method = "/stip.v1.Inference/Session";
  // Bytes that are no protobuf at all (a truncated varint, a bad wire type):
  // INVALID_ARGUMENT naming the problem, nothing acted on (no answer), and
  // everyone else still served.
  for (const std::string& garbage :
       {std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11),
        std::string("\x0f\x01\x02", 3), std::string("\x0a\x80\x80\x80\x80\x10", 6)}) {
    int answers = -1;
    grpc::Status s = RawBidi(channel_, method, {garbage, garbage}, &answers);
    EXPECT_EQ(answers, 0) << "the server answered a frame that is not a SessionRequest";
    ExpectStatus(s, Code::INVALID_ARGUMENT, "do not parse as a stip.v1.SessionRequest");
    ExpectOthersServed("a frame that is not a protobuf");
  }
  // A message that parses but carries none of open, step, close (empty, or
  // only an unknown field).
  for (const std::string& frame : {std::string(), std::string("\xa0\x06\x01", 3)}) {
    grpc::Status s = RawBidi(channel_, method, {frame});
    ExpectStatus(s, Code::INVALID_ARGUMENT, "none of open, step, close");
    ExpectOthersServed("an empty session message");
  }
  // A valid open, then garbage in the same stream.
  {
    v1::SessionRequest open;
    open.mutable_open()->set_instance_id(llama_->instance_id);
    open.mutable_open()->set_access_token(TokenFor(llama_->instance_id));
    int answers = -1;
    grpc::Status s =
        RawBidi(channel_, method,
                {open.SerializeAsString(), "\xff\xff\xff", open.SerializeAsString()}, &answers);
    EXPECT_EQ(answers, 1) << "only the open is answered";
    ExpectStatus(s, Code::INVALID_ARGUMENT, "3 bytes that do not parse");
    ExpectOthersServed("garbage after open");
  }
  // An unknown method, on both ports.
  EXPECT_EQ(RawBidi(channel_, "/stip.v1.Inference/Nope", {"x"}).error_code(), Code::UNIMPLEMENTED);
  EXPECT_EQ(RawBidi(admin_, "/stip.v1.ModelStore/Nope", {"x"}).error_code(), Code::UNIMPLEMENTED);
  ExpectOthersServed("unknown methods");

  // Bytes that are not TLS (nor HTTP/2) on either port, then a TLS hello cut short.
  for (int port : {server_->port(), server_->admin_port()}) {
    for (const std::string& bytes :
         {std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), std::string(4096, '\0'),
          std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11)}) {
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      ASSERT_GE(fd, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(port));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
      EXPECT_EQ(write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
      close(fd);
    }
  }
  ExpectOthersServed("raw bytes on the TLS ports");
  ExpectOnlyBystanderLeft();
}

TEST_F(HostileInputTest, HostileOpensAreRefusedWithClearErrors) {
  const std::string& id = llama_->instance_id;
  {
    Session s(channel_);
    ExpectStatus(s.Open(id, TokenFor(id), -5), Code::INVALID_ARGUMENT, "max_context");
  }
  ExpectOthersServed("a negative max_context");
  {
    Session s(channel_);
    ExpectStatus(s.Open("", TokenFor(id)), Code::INVALID_ARGUMENT, "instance_id is empty");
  }
  // An unknown instance: a long id full of control characters and quotes
  // must come back bounded and escaped (it reaches the log too).
  {
    std::string evil = "0123\n\r\x1b[31m\"\\" + std::string(100000, 'A');
    Session s(channel_);
    grpc::Status st = s.Open(evil, TokenFor(id));
    ExpectStatus(st, Code::NOT_FOUND, "0123\\x0a");
    EXPECT_EQ(Log().find("0123\n"), std::string::npos) << "raw control characters logged";
  }
  ExpectOthersServed("an unknown, hostile instance id");
  // Tokens: random bytes, a huge one, one for another instance.
  for (const std::string& token : {std::string("\x00\x01garbage", 9), std::string(1 << 20, 'x'),
                                   TokenFor("0123456789abcdef0123456789abcdef")}) {
    Session s(channel_);
    grpc::Status st = s.Open(id, token);
    EXPECT_TRUE(st.error_code() == Code::UNAUTHENTICATED ||
                st.error_code() == Code::PERMISSION_DENIED)
        << st.error_message();
    ExpectReadable(st.error_message());
  }
  ExpectOthersServed("bad tokens");
  // Open twice in one stream; open then close then steps.
  {
    Session s(channel_);
    ASSERT_TRUE(s.Open(id, TokenFor(id)).ok());
    v1::SessionRequest again;
    again.mutable_open()->set_instance_id(id);
    again.mutable_open()->set_access_token(TokenFor(id));
    EXPECT_FALSE(s.Send(again).has_value());
    ExpectStatus(s.Finish(), Code::FAILED_PRECONDITION, "already open");
  }
  {
    Session s(channel_);
    ASSERT_TRUE(s.Open(id, TokenFor(id)).ok());
    v1::SessionRequest close;
    close.mutable_close();
    EXPECT_FALSE(s.Send(close).has_value());
    for (int i = 0; i < 3; ++i) EXPECT_FALSE(s.Step(i, llama_->Input({1}, 0)).has_value());
    EXPECT_TRUE(s.Finish().ok());
  }
  ExpectOthersServed("open twice, steps after close");
  ExpectOnlyBystanderLeft();
}

TEST_F(HostileInputTest, HostileTensorsGetStepErrorsAndTheSessionGoesOn) {
  Session s(channel_);
  ASSERT_TRUE(s.Open(llama_->instance_id, TokenFor(llama_->instance_id)).ok());
  const int64_t d = llama_->hidden;
  uint64_t id = 0;
  auto wire = [&](const std::string& datatype, std::vector<int64_t> shape, std::string data) {
    v1::Tensor t;
    t.set_datatype(datatype);
    for (int64_t x : shape) t.add_shape(x);
    t.set_data(std::move(data));
    return t;
  };
  const std::string row(static_cast<size_t>(d) * 4, '\0');  // one FP32 row of zeros
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  struct Case {
    const char* what;
    v1::Tensor t;
    const char* needle;
  };
  std::vector<Case> cases = {
      {"a negative dim", wire("FP32", {-1, d}, row), "shape"},
      {"a negative hidden dim", wire("FP32", {1, -d}, row), "shape"},
      {"three dims", wire("FP32", {1, 1, d}, row), "shape"},
      {"one dim", wire("FP32", {d}, row), "shape"},
      {"nine dims", wire("FP32", {1, 1, 1, 1, 1, 1, 1, 1, d}, row), "shape"},
      {"no shape with data", wire("FP32", {}, row), "shape"},
      {"rows x hidden overflows int64", wire("FP32", {kMax / 2, d}, row), "too large"},
      {"2^62 elements", wire("FP32", {(int64_t{1} << 62) / d, d}, row), "too large"},
      {"2^31 elements", wire("FP32", {(int64_t{1} << 31) / d, d}, row), "bytes"},
      {"bytes short by one", wire("FP32", {1, d}, row.substr(1)), "bytes"},
      {"bytes long by one", wire("FP32", {1, d}, row + "x"), "bytes"},
      {"bytes of two rows for one", wire("FP32", {1, d}, row + row), "bytes"},
      {"no bytes", wire("FP32", {1, d}, ""), "bytes"},
      {"FP16 bytes for FP32 shape", wire("FP16", {2, d}, row + row), "bytes"},
      {"an empty datatype with data", wire("", {1, d}, row), "datatype"},
      {"lowercase fp32", wire("fp32", {1, d}, row), "datatype"},
      {"a hostile datatype", wire("FP32\n\x1b[2J" + std::string(5000, 'Z'), {1, d}, row),
       "datatype"},
      {"INT64 hidden states", wire("INT64", {1, d}, std::string(d * 8, '\0')),
       "FP32, FP16 or BF16"},
  };
  // Non-finite values in every float datatype.
  for (at::ScalarType type : {at::kFloat, at::kHalf, at::kBFloat16}) {
    for (float bad :
         {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
      at::Tensor x = llama_->Input({1, 2}, 0).to(type);
      x[1][d - 1] = bad;
      v1::Tensor t;
      ToWire(x, &t);
      cases.push_back({"a non-finite value", t, "NaN or infinite"});
    }
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    ++id;
    ExpectStepError(s.Step(id, c.t), id, Code::INVALID_ARGUMENT, c.needle);
    ExpectOthersServed(c.what);
  }
  // Beyond the model's own context (no client limit asked for): nothing is kept.
  ++id;
  ExpectStepError(s.Step(id, at::zeros({llama_->max_positions + 1, d})), id,
                  Code::RESOURCE_EXHAUSTED, "context limit");
  ExpectOthersServed("a step beyond the model's context");
  // truncate_to beyond what the session holds.
  ++id;
  ExpectStepError(s.Step(id, llama_->Input({1}, 0), /*truncate_to=*/1000), id,
                  Code::INVALID_ARGUMENT, "truncate_to");
  // The hostile session itself is intact and computes exactly.
  auto r = s.Step(++id, llama_->Input(kPrompt, 0));
  ASSERT_TRUE(r && r->has_result()) << (r ? r->ShortDebugString().substr(0, 300) : "ended");
  EXPECT_EQ(r->result().context_length(), static_cast<int64_t>(kPrompt.size()));
  EXPECT_LE(
      MaxAbsDiff(UnpermuteLogits(FromWire(r->result().logits()), llama_->keys.p_c), *reference_),
      kTolerance);
  EXPECT_TRUE(s.Close().ok());
  EXPECT_EQ(server_->counters().fallbacks.load(), 0u);
}

// ---- the store -------------------------------------------------------------------------

TEST_F(HostileInputTest, TruncatedAndMalformedUploadsStoreNothing) {
  const std::string& id = gpt2_->instance_id;
  {  // the trailer after half the chunks
    UploadPlan p = PlanFor(gpt2_->server_dir, id);
    p.mangle = [](const v1::FileChunk& c, int i) {
      return i < 3 ? std::vector<v1::FileChunk>{c} : std::vector<v1::FileChunk>{};
    };
    ExpectStatus(Upload(admin_, p), Code::INVALID_ARGUMENT, "incomplete");
  }
  ExpectStoreUntouched();
  ExpectOthersServed("an upload whose trailer came early");
  {  // the stream ends mid-file, no trailer
    UploadPlan p = PlanFor(gpt2_->server_dir, id);
    p.mangle = [](const v1::FileChunk& c, int i) {
      return i < 3 ? std::vector<v1::FileChunk>{c} : std::vector<v1::FileChunk>{};
    };
    p.send_trailer = false;
    ExpectStatus(Upload(admin_, p), Code::INVALID_ARGUMENT, "without a trailer");
  }
  ExpectStoreUntouched();
  ExpectOthersServed("an upload that stopped");
  {  // SHA mismatch
    UploadPlan p = PlanFor(gpt2_->server_dir, id);
    p.sha_override = std::string(64, 'f');
    ExpectStatus(Upload(admin_, p), Code::DATA_LOSS, "SHA-256 mismatch");
  }
  {  // a hostile digest string
    UploadPlan p = PlanFor(gpt2_->server_dir, id);
    p.sha_override = "\n\x1b[2J" + std::string(10000, 'e');
    ExpectStatus(Upload(admin_, p), Code::DATA_LOSS, "SHA-256 mismatch");
  }
  ExpectStoreUntouched();
  ExpectOthersServed("SHA mismatches");
  // Chunks that do not follow the header.
  struct Mangle {
    const char* what;
    std::function<std::vector<v1::FileChunk>(const v1::FileChunk&, int)> fn;
    const char* needle;
  };
  std::vector<Mangle> mangles = {
      {"a wrong offset",
       [](v1::FileChunk c, int i) {
         if (i == 1) c.set_offset(c.offset() + 1);
         return std::vector<v1::FileChunk>{c};
       },
       "offset"},
      {"a file index beyond the list",
       [](v1::FileChunk c, int i) {
         if (i == 1) c.set_file_index(1000000);
         return std::vector<v1::FileChunk>{c};
       },
       "chunk for file"},
      {"a chunk sent twice",
       [](const v1::FileChunk& c, int i) {
         return i == 1 ? std::vector<v1::FileChunk>{c, c} : std::vector<v1::FileChunk>{c};
       },
       "offset"},
      {"more bytes than declared",
       [](v1::FileChunk c, int) {
         c.mutable_data()->append(64 << 10, 'x');
         return std::vector<v1::FileChunk>{c};
       },
       "declared size"},
  };
  for (const Mangle& m : mangles) {
    UploadPlan p = PlanFor(gpt2_->server_dir, id);
    p.mangle = m.fn;
    ExpectStatus(Upload(admin_, p), Code::INVALID_ARGUMENT, m.needle);
    ExpectStoreUntouched();
    ExpectOthersServed(m.what);
  }
  // Headers: declared sizes beyond the limit, a name listed twice, names with
  // path separators or control characters, no files, no header at all.
  {
    UploadPlan p = PlanFor(gpt2_->server_dir, id);
    p.files[0].size = std::numeric_limits<uint64_t>::max() - 10;
    ExpectStatus(Upload(admin_, p), Code::RESOURCE_EXHAUSTED, "size limit");
  }
  {
    UploadPlan p = PlanFor(gpt2_->server_dir, id);
    p.files.push_back(p.files[0]);
    ExpectStatus(Upload(admin_, p), Code::INVALID_ARGUMENT, "listed twice");
  }
  for (const std::string& name : {std::string("../../evil"), std::string("/etc/passwd"),
                                  std::string("a\\b"), std::string("x\0y", 3), std::string("..")}) {
    UploadPlan p = PlanFor(gpt2_->server_dir, id);
    p.files[0].name = name;
    ExpectStatus(Upload(admin_, p), Code::INVALID_ARGUMENT, "plain file name");
  }
  {
    UploadPlan p = PlanFor(gpt2_->server_dir, id);
    p.files.clear();
    ExpectStatus(Upload(admin_, p), Code::INVALID_ARGUMENT, "no files");
  }
  {
    v1::UploadRequest chunk_first;
    chunk_first.mutable_chunk()->set_data("x");
    ExpectStatus(
        RawClientStream(admin_, "/stip.v1.ModelStore/Upload", {chunk_first.SerializeAsString()}),
        Code::INVALID_ARGUMENT, "header");
    grpc::Status s =
        RawClientStream(admin_, "/stip.v1.ModelStore/Upload", {"\xff\xff\xff\xff\xff\xff"});
    EXPECT_FALSE(s.ok());
  }
  EXPECT_FALSE(PathExists(JoinPath(store_->path(), "evil")));
  EXPECT_FALSE(PathExists(JoinPath(root_->path(), "evil")));
  ExpectStoreUntouched();
  ExpectOthersServed("hostile upload headers");
  // And a good upload still goes through.
  UploadOk(*gpt2_);
}

TEST_F(HostileInputTest, UploadsThatDoNotMatchTheirConfigAreRefused) {
  const std::string& id = gpt2_->instance_id;
  const std::string work = JoinPath(root_->path(), "broken-upload");
  const std::string st = "model.safetensors";
  struct Breakage {
    const char* what;
    std::function<void(const std::string& dir)> apply;
    const char* needle;
  };
  std::vector<Breakage> breakages = {
      {"a hidden size that is not the tensors'",
       [](const std::string& dir) {
         EditJson(JoinPath(dir, "config.json"), [](nlohmann::json& j) { j["n_embd"] = 128; });
       },
       "shape"},
      {"more layers than the tensors hold",
       [](const std::string& dir) {
         EditJson(JoinPath(dir, "config.json"),
                  [](nlohmann::json& j) { j["n_layer"] = j["n_layer"].get<int>() + 1; });
       },
       "missing"},
      {"a vocabulary that is not the head's",
       [](const std::string& dir) {
         EditJson(JoinPath(dir, "config.json"), [](nlohmann::json& j) { j["vocab_size"] = 7; });
       },
       "shape"},
      {"a config that is not JSON",
       [](const std::string& dir) { WriteFileAtomic(JoinPath(dir, "config.json"), "{\"model_"); },
       "config.json"},
      {"a tensor named with path separators",
       [&](const std::string& dir) {
         static const float kOne = 1;
         EditTensors(JoinPath(dir, st), [](std::vector<TensorBytes>& t) {
           t.push_back({"../../etc/passwd", DType::kF32, {1}, &kOne});
         });
       },
       "unexpected tensor"},
      {"a tensor of the wrong shape",
       [&](const std::string& dir) {
         EditTensors(JoinPath(dir, st), [](std::vector<TensorBytes>& t) {
           for (TensorBytes& b : t) {
             if (b.shape.size() == 2) {
               b.shape = {b.shape[1], b.shape[0]};
               if (b.shape[0] != b.shape[1]) break;
             }
           }
         });
       },
       "shape"},
      {"a tensor in an integer dtype",
       [&](const std::string& dir) {
         EditTensors(JoinPath(dir, st), [](std::vector<TensorBytes>& t) {
           for (TensorBytes& b : t) {
             if (b.dtype == DType::kF32) {
               b.dtype = DType::kI32;
               break;
             }
           }
         });
       },
       "dtype"},
      {"a safetensors header longer than the file",
       [&](const std::string& dir) {
         Patch(JoinPath(dir, st), 0, std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8));
       },
       "header"},
      {"a safetensors header that is not JSON",
       [&](const std::string& dir) { Patch(JoinPath(dir, st), 8, "#"); }, "JSON"},
      {"a truncated safetensors file",
       [&](const std::string& dir) {
         const std::string path = JoinPath(dir, st);
         std::string content = ReadFile(path);
         WriteFileAtomic(path, content.substr(0, content.size() - 100));
       },
       "model.safetensors"},
      {"an extra file",
       [](const std::string& dir) { WriteFileAtomic(JoinPath(dir, "run.sh"), "rm -rf /"); },
       "unexpected file"},
  };
  for (const Breakage& b : breakages) {
    SCOPED_TRACE(b.what);
    CopyDir(gpt2_->server_dir, work);
    b.apply(work);
    grpc::Status s = Upload(admin_, PlanFor(work, id));
    EXPECT_TRUE(s.error_code() == Code::INVALID_ARGUMENT || s.error_code() == Code::DATA_LOSS)
        << s.error_code() << " " << s.error_message();
    EXPECT_NE(s.error_message().find(b.needle), std::string::npos) << s.error_message();
    EXPECT_NE(s.error_message().find("nothing was stored"), std::string::npos) << s.error_message();
    ExpectReadable(s.error_message());
    ExpectStoreUntouched();
    ExpectOthersServed(b.what);
  }
  // A sharded checkpoint whose index points a tensor outside the directory.
  {
    const std::string other = JoinPath(root_->path(), "llama-escape");
    CopyDir(llama_->server_dir, other);
    const std::string index = JoinPath(other, "model.safetensors.index.json");
    EditJson(index, [](nlohmann::json& j) {
      auto& wm = j["weight_map"];
      wm[wm.begin().key()] = "../../outside.safetensors";
    });
    // Under another instance id, so that the id is not the reason.
    EditJson(JoinPath(other, "config.json"), [&](nlohmann::json& j) {
      std::string dumped = j.dump();
      size_t at = dumped.find(llama_->instance_id);
      ASSERT_NE(at, std::string::npos);
      dumped.replace(at, llama_->instance_id.size(), gpt2_->instance_id);
      j = nlohmann::json::parse(dumped);
    });
    grpc::Status s = Upload(admin_, PlanFor(other, id));
    ExpectStatus(s, Code::INVALID_ARGUMENT, "path separator");
    ExpectStoreUntouched();
    ExpectOthersServed("an index pointing outside");
  }
  UploadOk(*gpt2_);
}

// ---- on disk ------------------------------------------------------------------------------

TEST_F(HostileInputTest, CorruptedModelsOnDiskAreSkippedAndReported) {
  UploadOk(*gpt2_);
  const std::string gpt2_dir = JoinPath(ModelsDir(), gpt2_->instance_id);
  const std::string good_copy = CopyDir(gpt2_dir, JoinPath(root_->path(), "gpt2-stored"));
  struct Corruption {
    const char* what;
    std::function<void(const std::string& dir)> apply;
  };
  std::vector<Corruption> corruptions = {
      {"config.json not JSON",
       [](const std::string& dir) { WriteFileAtomic(JoinPath(dir, "config.json"), "\x01\x02"); }},
      {"config.json missing",
       [](const std::string& dir) { unlink(JoinPath(dir, "config.json").c_str()); }},
      {"safetensors header length past the end",
       [](const std::string& dir) {
         Patch(JoinPath(dir, "model.safetensors"), 0,
               std::string("\x00\x00\x00\x00\x00\x00\x00\x80", 8));
       }},
      {"safetensors header garbage",
       [](const std::string& dir) {
         Patch(JoinPath(dir, "model.safetensors"), 8, std::string(16, '\xff'));
       }},
      {"safetensors file emptied",
       [](const std::string& dir) { WriteFileAtomic(JoinPath(dir, "model.safetensors"), ""); }},
      {"access.json garbage (stored, but no sessions)",
       [](const std::string& dir) { WriteFileAtomic(JoinPath(dir, "access.json"), "[1,"); }},
  };
  for (const Corruption& c : corruptions) {
    SCOPED_TRACE(c.what);
    bystander_.reset();
    server_.reset();
    CopyDir(good_copy, gpt2_dir);
    c.apply(gpt2_dir);
    sink_->Clear();
    ASSERT_NO_THROW(Start());
    const std::vector<std::string> ids = ListIds(admin_);
    const bool access_only = std::string(c.what).find("access.json") == 0;
    if (access_only) {
      EXPECT_EQ(ids.size(), 2u);  // the model is fine; its access record is not
      Session s(channel_);
      grpc::Status st = s.Open(gpt2_->instance_id, TokenFor(gpt2_->instance_id));
      ExpectStatus(st, Code::FAILED_PRECONDITION, "no registered token key");
    } else {
      EXPECT_EQ(ids, std::vector<std::string>{llama_->instance_id});
      Session s(channel_);
      ExpectStatus(s.Open(gpt2_->instance_id, TokenFor(gpt2_->instance_id)), Code::NOT_FOUND,
                   "not on this server");
      EXPECT_NE(Log().find("skipping corrupted model"), std::string::npos) << Log();
    }
    EXPECT_NE(Log().find(gpt2_->instance_id), std::string::npos) << "not reported: " << Log();
    EXPECT_TRUE(PathExists(gpt2_dir)) << "a corrupted model must be left for the operator";
    OpenBystander();
    ExpectOthersServed(c.what);
  }
}

}  // namespace
}  // namespace stip
