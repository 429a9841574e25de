// The client (P3): generation through the STIP split on the demo models
// (exactly the Hugging Face reference), multi-turn conversations on one KV
// cache, stop strings, EOS, seeded sampling and option checks; RemoteSession
// against an in-test Inference service (errors in-band and at the end of the
// stream, reconnection); registration against an in-test Registry (modes,
// atomic replacement, digest mismatch); the Chat service; the stip-client
// binary's generate, chat and serve.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "client/bundle_store.h"
#include "client/chat_service.h"
#include "client/generator.h"
#include "client/local_backend.h"
#include "client/reconnect.h"
#include "client/registration.h"
#include "client/remote_session.h"
#include "common/arch/model_config.h"
#include "common/client/client_permuter.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/keys/model_keys.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/logits_transport.h"
#include "common/rpc/server_setup.h"
#include "common/rpc/status.h"
#include "common/rpc/tensor_wire.h"
#include "common/rpc/tls.h"
#include "common/tokenizer/tokenizer.h"
#include "common/transform/transform_checkpoint.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"
#include "stip/v1/stip.grpc.pb.h"
#include "tests/process_util.h"
#include "tests/temp_dir.h"
#include "tests/test_util.h"

namespace stip {
namespace {

using test::TempDir;

using test::ModelDir;
using test::Reference;
using test::ToIds;

const char* const kPrompt = "And God said,";
const char* const kToken = "access-token-7f3a";
const char* const kEnrolment = "enrol-token-19c2";

unsigned Mode(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return 0xffffffff;
  return st.st_mode & 07777;
}

std::string ReferenceText(const std::string& model) {
  return nlohmann::json::parse(ReadFile(ModelDir(model) + "/reference.json"))["greedy_text"];
}

// One transformed instance of a demo model: out/server + out/client.
struct Instance {
  std::string model;  // kjv-llama, kjv-gpt2
  std::string server_dir, client_dir, instance_id;
  std::shared_ptr<const ClientBundle> bundle;
  std::shared_ptr<const ServerModel> server;
  std::vector<int64_t> greedy_ids;  // prompt + 40
  std::string greedy_text;          // prompt + continuation
};

class Instances {
 public:
  static Instances& Get() {
    static Instances s;
    return s;
  }
  const Instance& operator[](const std::string& model) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(model);
    if (it != map_.end()) return it->second;
    Instance in;
    in.model = model;
    const std::string dir = ModelDir(model);
    const std::string out = tmp_ / model;
    ModelKeys keys = GenerateKeys(LoadModelConfig(dir), FingerprintModel(dir));
    TransformOptions opt;
    opt.progress = false;
    TransformCheckpoint(dir, out, keys, opt);
    in.server_dir = JoinPath(out, "server");
    in.client_dir = JoinPath(out, "client");
    in.instance_id = keys.instance_id;
    in.bundle = ClientBundle::Load(in.client_dir);
    in.server = ServerModel::Load(in.server_dir);
    in.greedy_ids = ToIds(Reference(dir, "greedy_ids"));
    in.greedy_text = ReferenceText(model);
    return map_.emplace(model, std::move(in)).first->second;
  }

 private:
  TempDir tmp_;
  std::mutex mu_;
  std::map<std::string, Instance> map_;
};

std::unique_ptr<Generator> LocalGenerator(const Instance& in, int64_t max_context = 0) {
  return std::make_unique<Generator>(in.bundle,
                                     std::make_unique<LocalServerBackend>(in.server, max_context));
}

GenerateOptions Greedy(int n) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.sampling.greedy = true;
  return o;
}

std::vector<int64_t> Concat(std::vector<int64_t> a, const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// ---- generation through the split (in-process server half) ----------------------

class ReferenceGreedy : public testing::TestWithParam<std::string> {};

TEST_P(ReferenceGreedy, PromptAndContinuationEqualTransformers) {
  const Instance& in = Instances::Get()[GetParam()];
  auto gen = LocalGenerator(in);
  std::string streamed;
  std::vector<int64_t> streamed_ids;
  GenerateResult r =
      gen->Generate(kPrompt, Greedy(40), [&](const std::string& piece, const auto& ids) {
        streamed += piece;
        streamed_ids.insert(streamed_ids.end(), ids.begin(), ids.end());
      });
  EXPECT_EQ(std::string(kPrompt) + r.text, in.greedy_text);
  EXPECT_EQ(streamed, r.text);
  EXPECT_EQ(Concat(r.prompt_ids, r.token_ids), in.greedy_ids);
  EXPECT_EQ(streamed_ids, r.token_ids);
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(r.token_ids.size(), 40u);
  // The last token is sampled but not yet sent: the next turn sends it.
  EXPECT_EQ(gen->cached_positions(), static_cast<int64_t>(in.greedy_ids.size()) - 1);
  EXPECT_EQ(gen->backend().context_length(), gen->cached_positions());
  EXPECT_EQ(r.context_length, static_cast<int64_t>(in.greedy_ids.size()));
}

INSTANTIATE_TEST_SUITE_P(DemoModels, ReferenceGreedy, testing::Values("kjv-llama", "kjv-gpt2"));

TEST(Generator, PermutationsMatchTheTransformRules) {
  // The generator's precomputed gathers are PermuteHidden / UnpermuteLogits:
  // x' = x[..., p] and o = o'[..., argsort(p_c)].
  const Instance& in = Instances::Get()["kjv-llama"];
  const ClientKeys& k = in.bundle->keys();
  at::Tensor x = at::randn({3, in.bundle->hidden_size()});
  at::Tensor o = at::randn({2, in.bundle->vocab_size()});
  at::Tensor p = at::tensor(at::ArrayRef<int64_t>(k.p), at::kLong);
  at::Tensor pc = at::tensor(at::ArrayRef<int64_t>(InversePermutation(k.p_c)), at::kLong);
  EXPECT_TRUE(at::equal(x.index_select(-1, p), PermuteHidden(x, k.p)));
  EXPECT_TRUE(at::equal(o.index_select(-1, pc), UnpermuteLogits(o, k.p_c)));
  // Un-permuting a permuted vocabulary vector gives it back.
  EXPECT_TRUE(
      at::equal(UnpermuteLogits(
                    o.index_select(-1, at::tensor(at::ArrayRef<int64_t>(k.p_c), at::kLong)), k.p_c),
                o));
}

class MultiTurn : public testing::TestWithParam<std::string> {};

TEST_P(MultiTurn, KeepsTheCacheAndEqualsOneShotOverTheConcatenation) {
  const Instance& in = Instances::Get()[GetParam()];
  auto gen = LocalGenerator(in);
  GenerateResult t1 = gen->Generate(kPrompt, Greedy(8));
  const std::string session = gen->backend().info().session_id;
  const int64_t after1 = gen->backend().context_length();
  EXPECT_EQ(after1, static_cast<int64_t>(t1.prompt_ids.size() + t1.token_ids.size()) - 1);
  std::vector<int64_t> history1 = gen->history();

  GenerateResult t2 = gen->Generate(" And Moses said", Greedy(8));
  EXPECT_EQ(gen->backend().info().session_id, session) << "the session was reopened";
  // Later turns get no BOS; the cache continues where turn 1 left it.
  ASSERT_FALSE(t2.prompt_ids.empty());
  if (auto bos = in.bundle->tokenizer().bos_id()) {
    EXPECT_NE(t2.prompt_ids[0], *bos);
  }
  EXPECT_EQ(gen->backend().context_length(),
            after1 + 1 + static_cast<int64_t>(t2.prompt_ids.size() + t2.token_ids.size()) - 1);
  EXPECT_EQ(gen->history(), Concat(Concat(history1, t2.prompt_ids), t2.token_ids));

  // One shot over the concatenated ids gives the same answer.
  auto fresh = LocalGenerator(in);
  GenerateResult one = fresh->GenerateIds(Concat(history1, t2.prompt_ids), Greedy(8));
  EXPECT_EQ(one.token_ids, t2.token_ids);
  EXPECT_EQ(one.text, t2.text);

  // Reset: a new session, an empty conversation; the first turn again.
  gen->Reset();
  EXPECT_TRUE(gen->history().empty());
  GenerateResult again = gen->Generate(kPrompt, Greedy(8));
  EXPECT_NE(gen->backend().info().session_id, session);
  EXPECT_EQ(again.token_ids, t1.token_ids);
}

INSTANTIATE_TEST_SUITE_P(DemoModels, MultiTurn, testing::Values("kjv-llama", "kjv-gpt2"));

TEST(Generator, StopStringsEndTheAnswerBeforeThem) {
  const Instance& in = Instances::Get()["kjv-llama"];
  const std::string cont = in.greedy_text.substr(std::string(kPrompt).size());
  // One stop string inside a token, one across tokens, one that never comes.
  for (const std::string& stop :
       {std::string("Isaac"), std::string("God of J"), std::string(", is he;")}) {
    SCOPED_TRACE(stop);
    auto gen = LocalGenerator(in);
    GenerateOptions o = Greedy(40);
    o.stop = {"no such text", stop};
    std::string streamed;
    GenerateResult r = gen->Generate(
        kPrompt, o, [&](const std::string& piece, const auto&) { streamed += piece; });
    ASSERT_NE(cont.find(stop), std::string::npos);
    EXPECT_EQ(r.text, cont.substr(0, cont.find(stop)));
    EXPECT_EQ(streamed, r.text);
    EXPECT_EQ(r.finish_reason, "stop");
    EXPECT_LT(r.token_ids.size(), 40u);
  }
  auto gen = LocalGenerator(in);
  GenerateOptions o = Greedy(40);
  o.stop = {"never in this text", "Holy Ghost and with"};  // completed by the last token
  GenerateResult r = gen->Generate(kPrompt, o);
  EXPECT_EQ(r.text, cont.substr(0, cont.find("Holy Ghost and with")));
  EXPECT_EQ(r.finish_reason, "stop");
  o.stop = {"never in this text"};
  gen->Reset();
  r = gen->Generate(kPrompt, o);
  EXPECT_EQ(r.text, cont);
  EXPECT_EQ(r.finish_reason, "length");
}

TEST(Generator, StopsAtEosAndKeepsItInTheConversation) {
  const Instance& in = Instances::Get()["kjv-gpt2"];
  // A copy of the bundle whose generation config makes the 3rd greedy token an EOS.
  TempDir tmp;
  const std::string dir = tmp / "bundle";
  MakeDirectories(dir, 0700);
  for (const std::string& f : ListDirectory(in.client_dir)) {
    CopyFile(JoinPath(in.client_dir, f), JoinPath(dir, f), 0600);
  }
  const size_t prompt_len = in.greedy_ids.size() - 40;
  const int64_t eos = in.greedy_ids[prompt_len + 2];
  nlohmann::json gc = nlohmann::json::parse(ReadFile(JoinPath(dir, "generation_config.json")));
  gc["eos_token_id"] = {gc["eos_token_id"], eos};
  WriteFileAtomic(JoinPath(dir, "generation_config.json"), gc.dump(), 0600);
  auto bundle = ClientBundle::Load(dir);
  ASSERT_NE(std::find(bundle->eos_ids().begin(), bundle->eos_ids().end(), eos),
            bundle->eos_ids().end());

  Generator gen(bundle, std::make_unique<LocalServerBackend>(in.server));
  GenerateResult r = gen.Generate(kPrompt, Greedy(40));
  EXPECT_EQ(r.finish_reason, "eos");
  EXPECT_EQ(r.token_ids, std::vector<int64_t>(in.greedy_ids.begin() + prompt_len,
                                              in.greedy_ids.begin() + prompt_len + 2));
  EXPECT_EQ(gen.history().back(), eos);  // sent with the next turn

  Generator through(bundle, std::make_unique<LocalServerBackend>(in.server));
  GenerateOptions o = Greedy(40);
  o.stop_at_eos = false;
  r = through.Generate(kPrompt, o);
  EXPECT_EQ(Concat(r.prompt_ids, r.token_ids), in.greedy_ids);
  EXPECT_EQ(std::string(kPrompt) + r.text, in.greedy_text);
}

TEST(Generator, SeededSamplingIsReproducible) {
  const Instance& in = Instances::Get()["kjv-llama"];
  GenerateOptions o;
  o.max_new_tokens = 30;
  o.sampling.temperature = 0.9;
  o.sampling.top_k = 40;
  o.sampling.top_p = 0.95;
  o.sampling.repetition_penalty = 1.1;
  o.sampling.seed = 1234;
  GenerateResult a = LocalGenerator(in)->Generate(kPrompt, o);
  GenerateResult b = LocalGenerator(in)->Generate(kPrompt, o);
  EXPECT_EQ(a.token_ids, b.token_ids);
  EXPECT_EQ(a.text, b.text);
  o.sampling.seed = 99;
  GenerateResult c = LocalGenerator(in)->Generate(kPrompt, o);
  EXPECT_NE(a.token_ids, c.token_ids);
}

TEST(Generator, OptionsAreValidated) {
  auto bad = [](auto change) {
    GenerateOptions o;
    change(o);
    return o;
  };
  std::vector<GenerateOptions> cases = {
      bad([](GenerateOptions& o) { o.max_new_tokens = 0; }),
      bad([](GenerateOptions& o) { o.sampling.temperature = -0.5; }),
      bad([](GenerateOptions& o) { o.sampling.temperature = std::nan(""); }),
      bad([](GenerateOptions& o) { o.sampling.temperature = INFINITY; }),
      bad([](GenerateOptions& o) { o.sampling.top_k = -1; }),
      bad([](GenerateOptions& o) { o.sampling.top_p = 0; }),
      bad([](GenerateOptions& o) { o.sampling.top_p = 1.5; }),
      bad([](GenerateOptions& o) { o.sampling.top_p = std::nan(""); }),
      bad([](GenerateOptions& o) { o.sampling.repetition_penalty = 0; }),
      bad([](GenerateOptions& o) { o.sampling.repetition_penalty = INFINITY; }),
      bad([](GenerateOptions& o) { o.stop = {""}; }),
  };
  const Instance& in = Instances::Get()["kjv-llama"];
  auto gen = LocalGenerator(in);
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(i);
    try {
      ValidateGenerateOptions(cases[i]);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    }
    EXPECT_THROW(gen->Generate(kPrompt, cases[i]), Error);
    EXPECT_TRUE(gen->history().empty());
  }
  GenerateOptions fine;
  fine.sampling.temperature = 0;  // greedy
  EXPECT_NO_THROW(ValidateGenerateOptions(fine));
  // Out-of-vocabulary ids and empty prompts are refused.
  EXPECT_THROW(gen->GenerateIds({1, in.bundle->vocab_size()}, Greedy(2)), Error);
  EXPECT_THROW(gen->GenerateIds({}, Greedy(2)), Error);
}

// ---- logits formats (common/rpc/logits_transport.h) ------------------------------

TEST(LogitsTransport, FormatsParseAndMalformedResultsAreRefused) {
  EXPECT_EQ(LogitsFormat::Parse("fp32"), LogitsFormat());
  EXPECT_EQ(LogitsFormat::Parse("fp16").kind, LogitsFormat::Kind::kFp16);
  EXPECT_EQ(LogitsFormat::Parse("top-k:64"), (LogitsFormat{LogitsFormat::Kind::kTopK, 64}));
  EXPECT_EQ(LogitsFormat::Parse("top-k:64").ToString(), "top-k:64");
  for (const char* bad : {"", "FP32", "top-k", "top-k:", "top-k:0", "top-k:-3", "top-k:5x",
                          "top-k:99999999999999999999", "bf16"}) {
    SCOPED_TRACE(bad);
    EXPECT_THROW(LogitsFormat::Parse(bad), Error);
  }

  // Results that do not match the format: refused with a reason, never
  // scattered into wrong places.
  const LogitsFormat top3{LogitsFormat::Kind::kTopK, 3};
  auto result = [](const at::Tensor& values, const at::Tensor& indices) {
    v1::StepResult r;
    ToWire(values, r.mutable_logits());
    if (indices.defined()) ToWire(indices, r.mutable_logits_indices());
    return r;
  };
  const at::Tensor v = at::tensor({3.0f, 2.0f, 1.0f}).view({1, 3});
  at::Tensor dense =
      DecodeLogits(result(v, at::tensor({7, 0, 9}, at::kInt).view({1, 3})), top3, 1, 10);
  EXPECT_EQ(dense[0][7].item<float>(), 3.0f);
  EXPECT_EQ(dense[0][0].item<float>(), 2.0f);
  EXPECT_EQ(dense[0][9].item<float>(), 1.0f);
  EXPECT_EQ(dense.isinf().sum().item<int64_t>(), 7);
  struct Bad {
    v1::StepResult r;
    std::string needle;
  };
  const std::vector<Bad> bad = {
      {result(v, at::tensor({7, 0, 10}, at::kInt).view({1, 3})), "outside the vocabulary of 10"},
      {result(v, at::tensor({7, -1, 1}, at::kInt).view({1, 3})), "index -1 is outside"},
      {result(v, at::tensor({7, 7, 1}, at::kInt).view({1, 3})), "repeat an index"},
      {result(v, at::tensor({7, 0}, at::kInt).view({1, 2})), "INT32"},
      {result(v, at::tensor({7, 0, 9}, at::kLong).view({1, 3})), "INT32"},
      {result(v, at::Tensor()), "datatype"},
      {result(v.view({3, 1}), at::tensor({7, 0, 9}, at::kInt).view({3, 1})), "[1, 3] FP32"},
  };
  for (const Bad& b : bad) {
    try {
      DecodeLogits(b.r, top3, 1, 10);
      ADD_FAILURE() << "accepted: " << b.needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(b.needle), std::string::npos) << e.what();
    }
  }
  // FP32 / FP16 formats: the full row; indices are not expected.
  const LogitsFormat fp16 = LogitsFormat::Parse("fp16");
  at::Tensor row = at::randn({2, 10});
  EXPECT_EQ(DecodeLogits(result(row.to(at::kHalf), at::Tensor()), fp16, 2, 10).scalar_type(),
            at::kFloat);
  EXPECT_THROW(DecodeLogits(result(row.to(at::kHalf), at::Tensor()), LogitsFormat(), 2, 10), Error);
  EXPECT_THROW(DecodeLogits(result(row, at::tensor({1}, at::kInt)), fp16, 2, 10), Error);
  EXPECT_THROW(DecodeLogits(result(row, at::Tensor()), fp16, 2, 11), Error);
  // Logits beyond FP16's range come back in FP32 rather than as infinities.
  at::Tensor big = row.clone();
  big[1][3] = 70000.0f;
  EncodedLogits e = EncodeLogits(big, fp16);
  EXPECT_EQ(e.values.scalar_type(), at::kFloat);
  EXPECT_TRUE(e.values.equal(big));
  EXPECT_EQ(EncodeLogits(row, fp16).values.scalar_type(), at::kHalf);
}

// Greedy decoding and top-k sampling with top_k < K are exact with a top-k
// format: the same tokens as with full logits (and as transformers); other
// sampling settings are refused before any work, naming what to change; a
// tie that reaches the K-th logit is reported, not sampled.
TEST(LogitsTransport, TopKIsExactWhereItSaysAndRefusesTheRest) {
  const Instance& in = Instances::Get()["kjv-llama"];
  auto with = [&](const std::string& format) {
    return std::make_unique<Generator>(
        in.bundle, std::make_unique<LocalServerBackend>(in.server, 0, LogitsFormat::Parse(format)));
  };
  GenerateResult r = with("top-k:2")->Generate(kPrompt, Greedy(40));
  EXPECT_EQ(Concat(r.prompt_ids, r.token_ids), in.greedy_ids);
  EXPECT_EQ(std::string(kPrompt) + r.text, in.greedy_text);

  GenerateOptions o;
  o.max_new_tokens = 30;
  o.sampling.temperature = 0.8;
  o.sampling.top_k = 4;
  o.sampling.top_p = 0.9;
  o.sampling.seed = 77;
  GenerateResult full = LocalGenerator(in)->Generate(kPrompt, o);
  EXPECT_EQ(with("top-k:5")->Generate(kPrompt, o).token_ids, full.token_ids);
  EXPECT_EQ(with("top-k:64")->Generate(kPrompt, o).token_ids, full.token_ids);
  EXPECT_EQ(with("fp16")->Generate(kPrompt, Greedy(40)).token_ids, r.token_ids);

  struct Refused {
    std::function<void(SamplingOptions&)> change;
    std::string needle;
  };
  const std::vector<Refused> refused = {
      {[](SamplingOptions& s) { s.top_k = 0; }, "top_k in 1..3, got top_k 0 (off)"},
      {[](SamplingOptions& s) { s.top_k = 4; }, "top_k in 1..3, got top_k 4"},
      {[](SamplingOptions& s) { s.repetition_penalty = 1.1; }, "repetition penalty"},
      {[](SamplingOptions& s) {
         s.greedy = true;
         s.repetition_penalty = 1.1;
       },
       "repetition penalty"},
  };
  auto gen = with("top-k:4");
  for (const Refused& x : refused) {
    GenerateOptions bad = o;
    x.change(bad.sampling);
    try {
      gen->Generate(kPrompt, bad);
      ADD_FAILURE() << "accepted: " << x.needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(x.needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("top-k:4"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(gen->history().empty());
  }
  // The same settings are fine with full logits.
  GenerateOptions penalized = o;
  penalized.sampling.repetition_penalty = 1.1;
  penalized.max_new_tokens = 3;
  EXPECT_NO_THROW(with("fp16")->Generate(kPrompt, penalized));
  // K beyond the vocabulary: refused when the session opens; K = 1 cannot
  // show a tie for the largest logit.
  EXPECT_THROW(with("top-k:100000")->Generate(kPrompt, Greedy(2)), Error);
  EXPECT_THROW(with("top-k:1")->Generate(kPrompt, Greedy(2)), Error);

  // Ties reaching the K-th logit (common with BF16 logits): not exact, said so.
  const LogitsFormat top4 = LogitsFormat::Parse("top-k:4");
  SamplingOptions greedy;
  greedy.greedy = true;
  SamplingOptions top2;
  top2.top_k = 2;
  const float inf = std::numeric_limits<float>::infinity();
  at::Tensor clear = at::tensor({5.0f, -inf, 4.0f, 3.0f, -inf, 2.0f, -inf});
  EXPECT_NO_THROW(CheckTopKRowExact(clear, top4, greedy));
  EXPECT_NO_THROW(CheckTopKRowExact(clear, top4, top2));
  at::Tensor tied = at::tensor({5.0f, -inf, 4.0f, 4.0f, -inf, 4.0f, -inf});  // 4 = the K-th
  EXPECT_NO_THROW(CheckTopKRowExact(tied, top4, greedy));                    // the largest is clear
  try {
    CheckTopKRowExact(tied, top4, top2);
    ADD_FAILURE() << "a tie with the top_k-th logit was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFailedPrecondition);
    EXPECT_NE(std::string(e.what()).find("would not be exact"), std::string::npos) << e.what();
  }
  at::Tensor all_tied = at::tensor({4.0f, -inf, 4.0f, 4.0f, -inf, 4.0f, -inf});
  EXPECT_THROW(CheckTopKRowExact(all_tied, top4, greedy), Error);
}

TEST(Generator, CancelledAnswerStaysAndTheNextTurnContinues) {
  const Instance& in = Instances::Get()["kjv-llama"];
  auto gen = LocalGenerator(in);
  GenerateOptions o = Greedy(40);
  int calls = 0;
  o.cancelled = [&] { return ++calls > 5; };
  GenerateResult r = gen->Generate(kPrompt, o);
  EXPECT_EQ(r.finish_reason, "cancelled");
  EXPECT_EQ(r.token_ids.size(), 5u);
  const size_t prompt_len = in.greedy_ids.size() - 40;
  EXPECT_EQ(Concat(r.prompt_ids, r.token_ids),
            std::vector<int64_t>(in.greedy_ids.begin(), in.greedy_ids.begin() + prompt_len + 5));
  // Continuing with an empty prompt picks up where the answer stopped.
  GenerateResult rest = gen->GenerateIds({}, Greedy(35));
  EXPECT_EQ(Concat(Concat(r.prompt_ids, r.token_ids), rest.token_ids), in.greedy_ids);
}

TEST(Generator, ContextLimit) {
  const Instance& in = Instances::Get()["kjv-llama"];
  auto gen = LocalGenerator(in, /*max_context=*/12);
  GenerateResult r = gen->Generate(kPrompt, Greedy(40));
  EXPECT_EQ(r.finish_reason, "length");
  EXPECT_EQ(gen->cached_positions(), 12);
  // The next prompt does not fit: refused, and the conversation is unchanged.
  const auto before = gen->history();
  try {
    gen->Generate(" And Moses said unto the LORD", Greedy(4));
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kResourceExhausted);
    EXPECT_NE(std::string(e.what()).find("context"), std::string::npos);
  }
  EXPECT_EQ(gen->history(), before);
}

// ---- RemoteSession against an in-test Inference service ---------------------------

class TestInference final : public v1::Inference::Service {
 public:
  TestInference(std::shared_ptr<const ServerModel> model, std::string instance)
      : model_(std::move(model)), instance_(std::move(instance)) {}

  std::atomic<int> opens{0}, steps{0};
  std::atomic<int> fail_step{-1};        // in-band RESOURCE_EXHAUSTED for this step id (once)
  std::atomic<int> end_after_steps{-1};  // end the stream UNAVAILABLE after this many steps (once)
  // Steps hang for up to this long, ending early if the stream is cancelled
  // (counted in cancelled_in_step).
  std::atomic<int> step_hang_ms{0};
  std::atomic<int> cancelled_in_step{0};
  std::mutex mu;
  std::vector<int64_t> truncates;  // truncate_to values >= 0 seen
  std::string last_token;

  grpc::Status Session(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::SessionResponse, v1::SessionRequest>* stream) override {
    v1::SessionRequest req;
    if (!stream->Read(&req) || !req.has_open()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "open first");
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      last_token = req.open().access_token();
    }
    if (req.open().instance_id() != instance_) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown model instance");
    }
    if (req.open().access_token() != kToken) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "access token not accepted");
    }
    ++opens;
    const ModelConfig& c = model_->config();
    v1::SessionResponse opened;
    opened.mutable_opened()->set_session_id("s" + std::to_string(opens.load()));
    opened.mutable_opened()->set_instance_id(instance_);
    opened.mutable_opened()->set_hidden_size(c.hidden_size);
    opened.mutable_opened()->set_vocab_size(c.vocab_size);
    opened.mutable_opened()->set_max_context(c.max_positions);
    opened.mutable_opened()->set_datatype("FP32");
    stream->Write(opened);
    KvCache cache = model_->NewCache();
    while (stream->Read(&req)) {
      if (req.has_close()) return grpc::Status::OK;
      if (!req.has_step()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "step?");
      const v1::Step& s = req.step();
      if (end_after_steps.load() >= 0 && steps.load() >= end_after_steps.load()) {
        end_after_steps = -1;
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server going away");
      }
      ++steps;
      if (step_hang_ms.load() > 0) {
        const auto until =
            std::chrono::steady_clock::now() + std::chrono::milliseconds(step_hang_ms.load());
        while (!context->IsCancelled() && std::chrono::steady_clock::now() < until) {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        if (context->IsCancelled()) {
          ++cancelled_in_step;
          return grpc::Status::CANCELLED;
        }
      }
      v1::SessionResponse resp;
      try {
        if (s.truncate_to() >= 0) {
          std::lock_guard<std::mutex> lock(mu);
          truncates.push_back(s.truncate_to());
          if (s.truncate_to() > cache.length()) throw InvalidArgument("truncate_to too large");
          cache.Truncate(s.truncate_to());
        }
        if (fail_step.load() == static_cast<int>(s.step_id())) {
          fail_step = -1;
          throw ResourceExhausted("injected: too busy");
        }
        at::Tensor x = FromWire(s.hidden()).to(at::kFloat);
        at::Tensor o = model_->Forward({{x, &cache, s.all_logits()}})[0];
        resp.mutable_result()->set_step_id(s.step_id());
        ToWire(o.to(at::kFloat), resp.mutable_result()->mutable_logits());
        resp.mutable_result()->set_context_length(cache.length());
      } catch (const Error& e) {
        resp.mutable_error()->set_step_id(s.step_id());
        resp.mutable_error()->mutable_status()->set_code(
            static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED));
        resp.mutable_error()->mutable_status()->set_message(e.what());
      }
      if (!stream->Write(resp)) break;
    }
    return grpc::Status::OK;
  }

 private:
  std::shared_ptr<const ServerModel> model_;
  std::string instance_;
};

TlsOptions Insecure() {
  TlsOptions t;
  t.insecure = true;
  return t;
}

struct RunningServer {
  std::unique_ptr<grpc::Server> server;
  std::string address;
  RunningServer(const std::vector<grpc::Service*>& services) {
    ServerSetup setup;
    setup.address = "127.0.0.1:0";
    setup.tls = Insecure();
    setup.name = "test";
    int port = 0;
    server = StartServer(setup, services, &port);
    address = "127.0.0.1:" + std::to_string(port);
  }
  ~RunningServer() { server->Shutdown(std::chrono::system_clock::now()); }
};

RemoteSessionOptions SessionOptions(const Instance& in, const std::string& address,
                                    const std::string& token = kToken) {
  RemoteSessionOptions o;
  o.address = address;
  o.instance_id = in.instance_id;
  o.access_token = token;
  o.expected_hidden = in.bundle->hidden_size();
  o.expected_vocab = in.bundle->vocab_size();
  return o;
}

std::unique_ptr<Generator> RemoteGenerator(const Instance& in, const std::string& address,
                                           const std::string& token = kToken) {
  auto channel = MakeChannel(address, Insecure(), "test");
  return std::make_unique<Generator>(
      in.bundle, std::make_unique<RemoteSession>(channel, SessionOptions(in, address, token)));
}

class Remote : public testing::TestWithParam<std::string> {};

TEST_P(Remote, GreedyEqualsTheReferenceAndMultiTurnKeepsTheSession) {
  const Instance& in = Instances::Get()[GetParam()];
  TestInference service(in.server, in.instance_id);
  RunningServer srv({&service});
  auto gen = RemoteGenerator(in, srv.address);
  GenerateResult r = gen->Generate(kPrompt, Greedy(40));
  EXPECT_EQ(Concat(r.prompt_ids, r.token_ids), in.greedy_ids);
  EXPECT_EQ(std::string(kPrompt) + r.text, in.greedy_text);
  EXPECT_EQ(service.steps.load(), 40);  // one prefill + 39 single-token steps
  GenerateResult t2 = gen->Generate(" And Moses said", Greedy(5));
  EXPECT_EQ(service.opens.load(), 1);
  EXPECT_EQ(gen->backend().context_length(),
            static_cast<int64_t>(in.greedy_ids.size() + t2.prompt_ids.size() + 5) - 1);
  // The same second turn in-process.
  auto local = LocalGenerator(in);
  local->Generate(kPrompt, Greedy(40));
  EXPECT_EQ(local->Generate(" And Moses said", Greedy(5)).token_ids, t2.token_ids);
  gen.reset();  // closes the stream
}

INSTANTIATE_TEST_SUITE_P(DemoModels, Remote, testing::Values("kjv-llama", "kjv-gpt2"));

TEST(RemoteSession, RefusedCredentialsUnknownInstanceAndUnreachableServer) {
  const Instance& in = Instances::Get()["kjv-llama"];
  TestInference service(in.server, in.instance_id);
  RunningServer srv({&service});
  {
    auto gen = RemoteGenerator(in, srv.address, "wrong-secret-token");
    try {
      gen->Generate(kPrompt, Greedy(2));
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(ToGrpcCode(e.code()), grpc::StatusCode::UNAUTHENTICATED);
      EXPECT_EQ(e.code(), ErrorCode::kUnauthenticated);
      EXPECT_EQ(std::string(e.what()).find("wrong-secret-token"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(srv.address), std::string::npos) << e.what();
    }
    EXPECT_TRUE(gen->history().empty());
  }
  {
    auto channel = MakeChannel(srv.address, Insecure(), "test");
    RemoteSessionOptions o = SessionOptions(in, srv.address);
    o.instance_id = "00000000000000000000000000000000";
    RemoteSession s(channel, o);
    try {
      s.Open();
      ADD_FAILURE() << "opened";
    } catch (const Error& e) {
      EXPECT_EQ(ToGrpcCode(e.code()), grpc::StatusCode::NOT_FOUND);
    }
    EXPECT_FALSE(s.is_open());
  }
  {
    // The bundle of another model against this server: sizes checked at open.
    auto channel = MakeChannel(srv.address, Insecure(), "test");
    RemoteSessionOptions o = SessionOptions(in, srv.address);
    o.expected_vocab = in.bundle->vocab_size() + 1;
    RemoteSession s(channel, o);
    try {
      s.Open();
      ADD_FAILURE() << "opened";
    } catch (const Error& e) {
      EXPECT_EQ(ToGrpcCode(e.code()), grpc::StatusCode::FAILED_PRECONDITION);
      EXPECT_NE(std::string(e.what()).find("vocabulary size"), std::string::npos);
    }
  }
  {
    // A port where nothing listens.
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    close(fd);
    const std::string dead = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
    auto gen = RemoteGenerator(in, dead);
    try {
      gen->Connect();
      ADD_FAILURE() << "connected";
    } catch (const Error& e) {
      EXPECT_EQ(ToGrpcCode(e.code()), grpc::StatusCode::UNAVAILABLE);
      EXPECT_NE(std::string(e.what()).find("cannot reach the stip server at " + dead),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(RemoteSession, StepErrorsInBandAndSessionLossAreRecovered) {
  const Instance& in = Instances::Get()["kjv-llama"];
  TestInference service(in.server, in.instance_id);
  RunningServer srv({&service});
  auto gen = RemoteGenerator(in, srv.address);
  GenerateResult t1 = gen->Generate(kPrompt, Greedy(10));  // steps 1..10
  const int64_t cached = gen->cached_positions();

  // An in-band error on the next turn's prefill: the session stays, the turn
  // is dropped, the next step rolls the cache back to the known length.
  service.fail_step = 11;
  try {
    gen->Generate(" And Moses said", Greedy(5));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(ToGrpcCode(e.code()), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(std::string(e.what()).find("injected"), std::string::npos);
  }
  EXPECT_TRUE(gen->backend().is_open());
  EXPECT_EQ(gen->history(), Concat(t1.prompt_ids, t1.token_ids));
  GenerateResult t2 = gen->Generate(" And Moses said", Greedy(5));
  {
    std::lock_guard<std::mutex> lock(service.mu);
    ASSERT_FALSE(service.truncates.empty());
    EXPECT_EQ(service.truncates.back(), cached);
  }
  EXPECT_EQ(service.opens.load(), 1);

  // The server goes away mid-answer: the turn fails naming it; the next turn
  // opens a new session and sends the conversation again.
  service.end_after_steps = service.steps.load() + 2;
  try {
    gen->Generate(" And Aaron", Greedy(5));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(ToGrpcCode(e.code()), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(std::string(e.what()).find("server unavailable"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(gen->backend().is_open());
  const std::vector<int64_t> kept = gen->history();
  GenerateResult t3 = gen->Generate(" and Miriam", Greedy(5));
  EXPECT_EQ(service.opens.load(), 2);
  auto local = LocalGenerator(in);
  std::vector<int64_t> ids = Concat(kept, t3.prompt_ids);
  EXPECT_EQ(local->GenerateIds(ids, Greedy(5)).token_ids, t3.token_ids);
  (void)t2;
}

// With a ReconnectPolicy the turn survives the loss: the client says so,
// waits, opens a new session, sends prompt + the tokens it has so far, and
// the answer equals the uninterrupted reference. A session the server ended
// for idleness (DEADLINE_EXCEEDED) is reopened at once.
TEST(RemoteSession, ReconnectsWithinTheTurnAndTheAnswerIsUnchanged) {
  const Instance& in = Instances::Get()["kjv-llama"];
  TestInference service(in.server, in.instance_id);
  RunningServer srv({&service});
  auto gen = RemoteGenerator(in, srv.address);
  std::vector<std::string> messages;
  ReconnectPolicy policy;
  policy.max_attempts = 3;
  policy.initial_delay_s = 0.01;
  policy.max_delay_s = 0.02;
  policy.notify = [&](const std::string& m) { messages.push_back(m); };
  gen->SetReconnectPolicy(policy);
  gen->Connect();
  service.end_after_steps = 12;  // in the middle of the answer
  std::string streamed;
  GenerateResult r = gen->Generate(
      kPrompt, Greedy(40), [&](const std::string& piece, const auto&) { streamed += piece; });
  EXPECT_EQ(Concat(r.prompt_ids, r.token_ids), in.greedy_ids);
  EXPECT_EQ(std::string(kPrompt) + r.text, in.greedy_text);
  EXPECT_EQ(streamed, r.text);  // nothing shown twice
  EXPECT_EQ(service.opens.load(), 2);
  EXPECT_EQ(gen->reconnects(), 1);
  ASSERT_EQ(messages.size(), 2u);
  EXPECT_EQ(messages[0].rfind("server unavailable: ", 0), 0u) << messages[0];
  EXPECT_NE(messages[0].find("reconnecting in "), std::string::npos) << messages[0];
  EXPECT_NE(messages[0].find("(attempt 1 of 3)"), std::string::npos) << messages[0];
  EXPECT_EQ(messages[1].rfind("reconnected: new session s2", 0), 0u) << messages[1];
  // The new session holds the whole conversation.
  EXPECT_EQ(gen->cached_positions(), static_cast<int64_t>(in.greedy_ids.size()) - 1);
  GenerateResult t2 = gen->Generate(" And Moses said", Greedy(5));
  auto local = LocalGenerator(in);
  local->Generate(kPrompt, Greedy(40));
  EXPECT_EQ(local->Generate(" And Moses said", Greedy(5)).token_ids, t2.token_ids);
}

TEST(Reconnect, ClassifiesBacksOffWithJitterAndGivesUp) {
  EXPECT_EQ(ClassifySessionLoss(Error(ErrorCode::kUnavailable, "x"), false),
            SessionLoss::kUnavailable);
  EXPECT_EQ(ClassifySessionLoss(Error(ErrorCode::kUnavailable, "x"), true),
            SessionLoss::kNone);  // an in-band error: the session goes on
  EXPECT_EQ(ClassifySessionLoss(Error(ErrorCode::kDeadlineExceeded, "idle"), false),
            SessionLoss::kExpired);
  EXPECT_EQ(
      ClassifySessionLoss(Error(ErrorCode::kDeadlineExceeded, "x", kReasonCallerDeadline), false),
      SessionLoss::kNone);  // the client's own deadline
  EXPECT_EQ(ClassifySessionLoss(Error(ErrorCode::kPermissionDenied, "x"), false),
            SessionLoss::kNone);
  EXPECT_EQ(ClassifySessionLoss(InvalidArgument("x"), false), SessionLoss::kNone);
  ReconnectPolicy p;
  p.initial_delay_s = 0.5;
  p.max_delay_s = 4;
  EXPECT_DOUBLE_EQ(BackoffDelaySeconds(p, 1, 0.0), 0.25);
  EXPECT_DOUBLE_EQ(BackoffDelaySeconds(p, 1, 1.0), 0.5);
  EXPECT_DOUBLE_EQ(BackoffDelaySeconds(p, 3, 1.0), 2.0);
  EXPECT_DOUBLE_EQ(BackoffDelaySeconds(p, 10, 0.5), 3.0);  // capped at 4, then jittered
  EXPECT_FALSE(SleepUnlessCancelled(10, [] { return true; }));

  // A server that goes away for good: the turn fails after the attempts,
  // saying so; the conversation is kept for a later turn.
  const Instance& in = Instances::Get()["kjv-gpt2"];
  auto service = std::make_unique<TestInference>(in.server, in.instance_id);
  auto srv = std::make_unique<RunningServer>(std::vector<grpc::Service*>{service.get()});
  RemoteSessionOptions o = SessionOptions(in, srv->address);
  o.reconnect_wait_ms = 100;
  auto gen = std::make_unique<Generator>(
      in.bundle, std::make_unique<RemoteSession>(MakeChannel(srv->address, Insecure(), "test"), o));
  p.max_attempts = 2;
  p.initial_delay_s = 0.01;
  p.max_delay_s = 0.01;
  gen->SetReconnectPolicy(p);
  gen->Generate(kPrompt, Greedy(3));
  srv.reset();
  try {
    gen->Generate(" And Moses said", Greedy(3));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(ToGrpcCode(e.code()), grpc::StatusCode::UNAVAILABLE);
    EXPECT_NE(std::string(e.what()).find("gave up after 2 reconnect attempts"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(gen->reconnects(), 0);
}

// ---- registration against an in-test Registry ------------------------------------

class TestRegistry final : public v1::Registry::Service {
 public:
  std::string bundle_dir, instance, server_address = "stip-server.example:8443";
  std::string ca_pem = "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n";
  bool corrupt_sha = false;
  bool drop_trailer = false;

  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* req,
                        grpc::ServerWriter<v1::BundleChunk>* writer) override {
    if (req->enrolment_token() != kEnrolment) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "enrolment token not accepted");
    }
    return Send(req->user(), writer);
  }
  grpc::Status FetchBundle(grpc::ServerContext*, const v1::FetchBundleRequest* req,
                           grpc::ServerWriter<v1::BundleChunk>* writer) override {
    if (req->access_token() != kToken) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "access token not accepted");
    }
    return Send(req->user(), writer);
  }

 private:
  grpc::Status Send(const std::string& user, grpc::ServerWriter<v1::BundleChunk>* writer) {
    std::vector<OutgoingFile> files = ListFilesForTransfer(bundle_dir);
    v1::BundleChunk head;
    v1::BundleHeader* h = head.mutable_header();
    h->set_user(user);
    h->set_instance_id(instance);
    h->set_server_address(server_address);
    h->set_access_token(kToken);
    h->set_server_ca_pem(ca_pem);
    FillEntries(files, h->mutable_files());
    writer->Write(head);
    std::string sha = StreamFiles(files, 64 << 10, [&](const v1::FileChunk& c) {
      v1::BundleChunk m;
      *m.mutable_chunk() = c;
      return writer->Write(m);
    });
    if (corrupt_sha) sha[0] = sha[0] == '0' ? '1' : '0';
    if (!drop_trailer) {
      v1::BundleChunk t;
      t.mutable_trailer()->set_sha256(sha);
      writer->Write(t);
    }
    return grpc::Status::OK;
  }
};

TEST(Registration, StoresAPrivateBundleAndCredentials) {
  const Instance& in = Instances::Get()["kjv-llama"];
  TestRegistry registry;
  registry.bundle_dir = in.client_dir;
  registry.instance = in.instance_id;
  RunningServer srv({&registry});
  TempDir tmp;
  DataDir data(tmp / "data");
  auto channel = MakeChannel(srv.address, Insecure(), "test");
  RegistrationResult r = RegisterWithDeveloper(channel, srv.address, "alice", kEnrolment, data);
  EXPECT_EQ(r.credentials.instance_id, in.instance_id);
  EXPECT_EQ(Mode(data.path()), 0700u);
  EXPECT_EQ(Mode(data.bundle_dir()), 0700u);
  const auto names = ListDirectory(data.bundle_dir());
  EXPECT_EQ(names, ListDirectory(in.client_dir));
  for (const std::string& f : names) {
    EXPECT_EQ(Mode(JoinPath(data.bundle_dir(), f)), 0600u) << f;
    EXPECT_EQ(ReadFile(JoinPath(data.bundle_dir(), f)), ReadFile(JoinPath(in.client_dir, f)));
  }
  EXPECT_EQ(Mode(data.credentials_file()), 0600u);
  EXPECT_EQ(ListDirectory(data.path()), (std::vector<std::string>{"bundle", "credentials.json"}));
  Credentials c = data.LoadCredentials();
  EXPECT_EQ(c.user, "alice");
  EXPECT_EQ(c.instance_id, in.instance_id);
  EXPECT_EQ(c.server_address, registry.server_address);
  EXPECT_EQ(c.access_token, kToken);
  EXPECT_EQ(c.server_ca_pem, registry.ca_pem);
  EXPECT_EQ(c.developer, srv.address);
  auto bundle = ClientBundle::Load(data.bundle_dir(), c.instance_id);
  EXPECT_EQ(bundle->keys().p, in.bundle->keys().p);

  // FetchBundle with the access token replaces it the same way.
  RegistrationResult f = FetchBundleFromDeveloper(channel, srv.address, data);
  EXPECT_EQ(f.credentials.instance_id, in.instance_id);
  EXPECT_EQ(ListDirectory(data.path()), (std::vector<std::string>{"bundle", "credentials.json"}));
}

TEST(Registration, FailuresLeaveNothingAndKeepThePreviousBundle) {
  const Instance& llama = Instances::Get()["kjv-llama"];
  const Instance& gpt2 = Instances::Get()["kjv-gpt2"];
  TestRegistry registry;
  registry.bundle_dir = llama.client_dir;
  registry.instance = llama.instance_id;
  RunningServer srv({&registry});
  auto channel = MakeChannel(srv.address, Insecure(), "test");
  TempDir tmp;
  DataDir data(tmp / "data");

  registry.corrupt_sha = true;
  try {
    RegisterWithDeveloper(channel, srv.address, "bob", kEnrolment, data);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kDataLoss);
  }
  EXPECT_TRUE(ListDirectory(data.path()).empty());
  registry.corrupt_sha = false;

  registry.drop_trailer = true;
  EXPECT_THROW(RegisterWithDeveloper(channel, srv.address, "bob", kEnrolment, data), Error);
  EXPECT_TRUE(ListDirectory(data.path()).empty());
  registry.drop_trailer = false;

  try {
    RegisterWithDeveloper(channel, srv.address, "bob", "not-the-token", data);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(ToGrpcCode(e.code()), grpc::StatusCode::PERMISSION_DENIED);
  }
  EXPECT_TRUE(ListDirectory(data.path()).empty());
  EXPECT_THROW(data.LoadCredentials(), Error);

  // A bundle whose keys belong to another instance than the header says.
  registry.instance = gpt2.instance_id;
  EXPECT_THROW(RegisterWithDeveloper(channel, srv.address, "bob", kEnrolment, data), Error);
  EXPECT_TRUE(ListDirectory(data.path()).empty());
  registry.instance = llama.instance_id;

  RegisterWithDeveloper(channel, srv.address, "bob", kEnrolment, data);
  const std::string keys_before = ReadFile(JoinPath(data.bundle_dir(), "client_keys.safetensors"));
  // A failed re-registration keeps the working bundle.
  registry.bundle_dir = gpt2.client_dir;
  registry.instance = gpt2.instance_id;
  registry.corrupt_sha = true;
  EXPECT_THROW(RegisterWithDeveloper(channel, srv.address, "bob", kEnrolment, data), Error);
  EXPECT_EQ(ReadFile(JoinPath(data.bundle_dir(), "client_keys.safetensors")), keys_before);
  EXPECT_EQ(data.LoadCredentials().instance_id, llama.instance_id);
  EXPECT_EQ(ListDirectory(data.path()), (std::vector<std::string>{"bundle", "credentials.json"}));
  // A successful one replaces bundle and credentials together.
  registry.corrupt_sha = false;
  RegisterWithDeveloper(channel, srv.address, "bob", kEnrolment, data);
  EXPECT_EQ(data.LoadCredentials().instance_id, gpt2.instance_id);
  EXPECT_EQ(ClientBundle::Load(data.bundle_dir(), gpt2.instance_id)->instance_id(),
            gpt2.instance_id);
  EXPECT_EQ(ListDirectory(data.path()), (std::vector<std::string>{"bundle", "credentials.json"}));
}

// ---- the Chat service --------------------------------------------------------------

struct ChatCall {
  std::string text;
  std::vector<int64_t> ids;
  v1::GenerateResponse done;
  grpc::Status status;
};

ChatCall CallChat(v1::Chat::Stub& stub, const v1::GenerateRequest& req) {
  grpc::ClientContext ctx;
  ChatCall out;
  auto reader = stub.Generate(&ctx, req);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
    out.text += resp.text();
    out.ids.insert(out.ids.end(), resp.token_ids().begin(), resp.token_ids().end());
    if (resp.done()) out.done = resp;
  }
  out.status = reader->Finish();
  return out;
}

// Chat service options whose sessions go to the stip server at `upstream`
// (a TestInference), reconnecting up to 3 times.
ChatServiceOptions UpstreamChatOptions(const Instance& in, const std::string& upstream) {
  ChatServiceOptions so;
  so.bundle = in.bundle;
  auto channel = MakeChannel(upstream, Insecure(), "test");
  RemoteSessionOptions ro = SessionOptions(in, upstream);
  so.make_backend = [channel, ro] { return std::make_unique<RemoteSession>(channel, ro); };
  so.reconnect.max_attempts = 3;
  return so;
}

// A greedy request of 40 tokens for kPrompt in `conversation` ("": none).
v1::GenerateRequest GreedyChatRequest(const std::string& conversation = "c") {
  v1::GenerateRequest req;
  req.set_prompt(kPrompt);
  req.set_max_new_tokens(40);
  req.mutable_sampling()->set_greedy(true);
  req.set_conversation_id(conversation);
  return req;
}

TEST(ChatService, StreamsCompletionsAndKeepsConversations) {
  const Instance& in = Instances::Get()["kjv-llama"];
  ChatServiceOptions so;
  so.bundle = in.bundle;
  auto model = in.server;
  so.make_backend = [model] { return std::make_unique<LocalServerBackend>(model); };
  so.max_conversations = 2;
  ChatService service(so);
  RunningServer srv({&service});
  auto stub = v1::Chat::NewStub(MakeChannel(srv.address, Insecure(), "test"));

  v1::GenerateRequest req = GreedyChatRequest("");
  ChatCall one = CallChat(*stub, req);
  ASSERT_TRUE(one.status.ok()) << one.status.error_message();
  EXPECT_EQ(std::string(kPrompt) + one.text, in.greedy_text);
  EXPECT_EQ(one.ids, std::vector<int64_t>(in.greedy_ids.end() - 40, in.greedy_ids.end()));
  EXPECT_TRUE(one.done.done());
  EXPECT_EQ(one.done.finish_reason(), "length");
  EXPECT_EQ(one.done.completion_tokens(), 40);
  EXPECT_EQ(one.done.prompt_tokens(), static_cast<int>(in.greedy_ids.size()) - 40);
  EXPECT_EQ(service.conversations(), 0u);

  // A conversation: the second call continues the first (as a local Generator).
  req.set_conversation_id("c1");
  req.set_max_new_tokens(6);
  ChatCall a = CallChat(*stub, req);
  req.set_prompt(" And Moses said");
  ChatCall b = CallChat(*stub, req);
  ASSERT_TRUE(a.status.ok() && b.status.ok());
  auto local = LocalGenerator(in);
  local->Generate(kPrompt, Greedy(6));
  EXPECT_EQ(local->Generate(" And Moses said", Greedy(6)).token_ids, b.ids);
  EXPECT_EQ(service.conversations(), 1u);

  // Stop strings and bad parameters.
  v1::GenerateRequest s = GreedyChatRequest("");
  s.add_stop("Isaac");
  ChatCall stopped = CallChat(*stub, s);
  EXPECT_EQ(stopped.done.finish_reason(), "stop");
  EXPECT_EQ(std::string(kPrompt) + stopped.text,
            in.greedy_text.substr(0, in.greedy_text.find("Isaac")));
  v1::GenerateRequest bad = s;
  bad.mutable_sampling()->set_greedy(false);
  bad.mutable_sampling()->set_top_p(1.5);
  EXPECT_EQ(CallChat(*stub, bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  bad = s;
  bad.set_max_new_tokens(-1);
  EXPECT_EQ(CallChat(*stub, bad).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // More conversations than the limit: the least recently used one goes.
  for (const char* id : {"c2", "c3"}) {
    req.set_conversation_id(id);
    EXPECT_TRUE(CallChat(*stub, req).status.ok());
  }
  EXPECT_EQ(service.conversations(), 2u);
}

// ---- the stip-client binary -----------------------------------------------------------

// The binary with `input` on stdin (tests/process_util.h).
test::RunResult RunProcess(const std::vector<std::string>& argv, const std::string& input = "") {
  return test::Run(argv, 120, input);
}

// The daemon's conversations reconnect like the CLI (the server goes away in
// the middle of an answer, the request still succeeds with the same text),
// and an oversized prompt is refused naming the limit.
TEST(ChatService, ReconnectsAndLimitsThePromptSize) {
  const Instance& in = Instances::Get()["kjv-llama"];
  TestInference inference(in.server, in.instance_id);
  RunningServer upstream({&inference});
  ChatServiceOptions so = UpstreamChatOptions(in, upstream.address);
  so.max_prompt_bytes = 64;
  so.reconnect.initial_delay_s = 0.01;
  so.reconnect.max_delay_s = 0.02;
  ChatService service(so);
  RunningServer srv({&service});
  auto stub = v1::Chat::NewStub(MakeChannel(srv.address, Insecure(), "test"));

  v1::GenerateRequest req = GreedyChatRequest();
  ChatCall warm = CallChat(*stub, req);  // the conversation's session is open
  ASSERT_TRUE(warm.status.ok()) << warm.status.error_message();
  EXPECT_EQ(std::string(kPrompt) + warm.text, in.greedy_text);
  req.set_conversation_id("");
  inference.end_after_steps = inference.steps.load() + 10;
  ChatCall one = CallChat(*stub, req);
  ASSERT_TRUE(one.status.ok()) << one.status.error_message();
  EXPECT_EQ(std::string(kPrompt) + one.text, in.greedy_text);
  EXPECT_EQ(inference.opens.load(), 3);  // the conversation, the one-off, its reconnect

  req.set_prompt(std::string(65, 'a'));
  ChatCall big = CallChat(*stub, req);
  EXPECT_EQ(big.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(big.status.error_message().find("prompt size limit of 64 bytes"), std::string::npos)
      << big.status.error_message();
  EXPECT_NE(big.status.error_message().find("--max-prompt-bytes"), std::string::npos);
}

// A Chat caller's deadline reaches the stip server: the step in flight is
// interrupted when the caller's deadline passes (the server stops working for
// it then, not when the step is done), and the conversation goes on with a
// new session on the next call.
TEST(ChatService, CallersDeadlineInterruptsTheServersStep) {
  const Instance& in = Instances::Get()["kjv-llama"];
  TestInference inference(in.server, in.instance_id);
  RunningServer upstream({&inference});
  ChatService service(UpstreamChatOptions(in, upstream.address));
  RunningServer srv({&service});
  auto stub = v1::Chat::NewStub(MakeChannel(srv.address, Insecure(), "test"));

  const v1::GenerateRequest req = GreedyChatRequest();
  // Every step hangs (up to a minute) until its stream is cancelled.
  inference.step_hang_ms = 60000;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
  }
  grpc::Status st = reader->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  // The server's step saw its stream cancelled (else it hangs for a minute).
  for (int i = 0; i < 1000 && inference.cancelled_in_step.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(inference.cancelled_in_step.load(), 1);
  // The conversation continues: a new session, the reference answer.
  inference.step_hang_ms = 0;
  for (int i = 0; i < 500 && service.active() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ChatCall next = CallChat(*stub, req);
  ASSERT_TRUE(next.status.ok()) << next.status.error_message();
  EXPECT_EQ(std::string(kPrompt) + next.text, in.greedy_text);
  EXPECT_EQ(inference.opens.load(), 2);
}

TEST(Binary, GenerateAndChatPrintExactly) {
  const Instance& in = Instances::Get()["kjv-gpt2"];
  const std::vector<std::string> base = {STIP_CLIENT_BIN, "generate",       "--bundle",
                                         in.client_dir,   "--server-model", in.server_dir};
  auto argv = base;
  for (const char* a : {"--prompt", kPrompt, "--max-new-tokens", "40", "--greedy"}) {
    argv.push_back(a);
  }
  test::RunResult r = RunProcess(argv);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, in.greedy_text + "\n");

  // chat: "> " prompts, the continuation of each line, /exit.
  test::RunResult c =
      RunProcess({STIP_CLIENT_BIN, "chat", "--bundle", in.client_dir, "--server-model",
                  in.server_dir, "--greedy", "--max-new-tokens", "40"},
                 std::string(kPrompt) + "\n/exit\n");
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(c.out, "> " + in.greedy_text.substr(std::string(kPrompt).size()) + "\n> ");
  // End of input ends it too, after a newline.
  c = RunProcess({STIP_CLIENT_BIN, "chat", "--bundle", in.client_dir, "--server-model",
                  in.server_dir, "--greedy", "--max-new-tokens", "3"},
                 "/reset\n");
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(c.out, "> (new conversation)\n> \n");

  // Errors: one line on stderr, a nonzero status.
  argv = base;
  for (const char* a : {"--prompt", kPrompt, "--top-p", "2"}) argv.push_back(a);
  r = RunProcess(argv);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err.rfind("stip-client: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.out, "");
  r = RunProcess({STIP_CLIENT_BIN, "generate", "--prompt", "x"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err.rfind("stip-client: error: ", 0), 0u) << r.err;
}

TEST(Binary, RegisterThenGenerateThroughAServer) {
  const Instance& in = Instances::Get()["kjv-llama"];
  TestInference inference(in.server, in.instance_id);
  RunningServer inference_srv({&inference});
  TestRegistry registry;
  registry.bundle_dir = in.client_dir;
  registry.instance = in.instance_id;
  registry.server_address = inference_srv.address;
  registry.ca_pem = "";
  RunningServer registry_srv({&registry});
  TempDir tmp;
  const std::string data = tmp / "data";

  test::RunResult reg =
      RunProcess({STIP_CLIENT_BIN, "register", "--developer", registry_srv.address, "--user",
                  "carol", "--token", kEnrolment, "--data-dir", data, "--insecure"});
  ASSERT_EQ(reg.exit_code, 0) << reg.err;
  EXPECT_EQ(Mode(data), 0700u);
  EXPECT_EQ(Mode(JoinPath(data, "credentials.json")), 0600u);
  EXPECT_EQ(reg.out.find(kToken), std::string::npos);
  EXPECT_EQ(reg.err.find(kToken), std::string::npos);

  test::RunResult r = RunProcess({STIP_CLIENT_BIN, "generate", "--data-dir", data, "--prompt",
                                  kPrompt, "--max-new-tokens", "40", "--greedy", "--insecure"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, in.greedy_text + "\n");
  EXPECT_EQ(r.err.find(kToken), std::string::npos);
  {
    std::lock_guard<std::mutex> lock(inference.mu);
    EXPECT_EQ(inference.last_token, kToken);
  }

  // TLS is the default: the plaintext test server is not reachable that way.
  r = RunProcess({STIP_CLIENT_BIN, "generate", "--data-dir", data, "--prompt", kPrompt});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(
      r.err.find("stip-client: error: cannot reach the stip server at " + inference_srv.address),
      std::string::npos)
      << r.err;
}

TEST(Binary, ServeAnswersChatRequests) {
  const Instance& in = Instances::Get()["kjv-llama"];
  TempDir tmp;
  test::Daemon serve({STIP_CLIENT_BIN, "serve", "--bundle", in.client_dir, "--server-model",
                      in.server_dir, "--listen", "127.0.0.1:0", "--listen-insecure"},
                     tmp / "serve.log");
  const std::string address = serve.WaitListening(60);
  ASSERT_EQ(serve.lines().front().rfind("stip-client listening on 127.0.0.1:", 0), 0u)
      << serve.lines().front();
  auto stub = v1::Chat::NewStub(MakeChannel(address, Insecure(), "test"));
  ChatCall call = CallChat(*stub, GreedyChatRequest(""));
  EXPECT_TRUE(call.status.ok()) << call.status.error_message();
  EXPECT_EQ(std::string(kPrompt) + call.text, in.greedy_text);
  // SIGTERM with the channel still open: exit status 0.
  EXPECT_EQ(serve.Stop(), 0) << ReadFile(serve.log_path());
}

}  // namespace
}  // namespace stip
