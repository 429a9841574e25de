// Chat turns through the STIP split (in-process server half, a real
// transformed checkpoint): generation_config.json's list of EOS ids stops
// generation (checked against the Hugging Face greedy reference of
// models/kjv-llama), and the chat mode of the Generator renders the
// conversation with the model's chat template and prefills only the new
// suffix -- giving exactly the answer a fresh session gets for the whole
// conversation, also when the new render does not extend the old one.
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "client/bundle_store.h"
#include "client/generator.h"
#include "client/local_backend.h"
#include "common/arch/model_config.h"
#include "common/chat/chat_template.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/keys/model_keys.h"
#include "common/tokenizer/tokenizer.h"
#include "common/transform/transform_checkpoint.h"
#include "common/util/files.h"
#include "tests/temp_dir.h"
#include "tests/test_util.h"

namespace stip {
namespace {

using nlohmann::ordered_json;
using test::ModelDir;

struct Instance {
  std::string client_dir;
  std::shared_ptr<const ClientBundle> bundle;
  std::shared_ptr<const ServerModel> server;
};

// Transforms `model_dir` once per name (keys, server half, client bundle).
Instance Transform(const std::string& name, const std::string& model_dir) {
  static test::TempDir tmp("stip-chatgen");
  static std::mutex mu;
  static std::map<std::string, Instance> done;
  std::lock_guard<std::mutex> lock(mu);
  auto it = done.find(name);
  if (it != done.end()) return it->second;
  const std::string out = tmp / name;
  ModelKeys keys = GenerateKeys(LoadModelConfig(model_dir), FingerprintModel(model_dir));
  TransformOptions opt;
  opt.progress = false;
  TransformCheckpoint(model_dir, out, keys, opt);
  Instance in;
  in.client_dir = JoinPath(out, "client");
  in.bundle = ClientBundle::Load(in.client_dir);
  in.server = ServerModel::Load(JoinPath(out, "server"));
  return done.emplace(name, in).first->second;
}

std::unique_ptr<Generator> Local(const Instance& in) {
  return std::make_unique<Generator>(in.bundle, std::make_unique<LocalServerBackend>(in.server, 0));
}

GenerateOptions Greedy(int n) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.sampling.greedy = true;
  return o;
}

TEST(GenerationConfigEos, EveryIdOfTheListStops) {
  // kjv-llama with a generation_config.json whose eos_token_id is a list, as
  // Llama-3's: [</s>, the 5th token of the reference's greedy answer].
  const std::string src = ModelDir("kjv-llama");
  const std::vector<int64_t> greedy = test::ToIds(test::Reference(src, "greedy_ids"));
  auto tok = Tokenizer::FromDirectory(src);
  const std::vector<int64_t> prompt = tok->Encode("And God said,");
  ASSERT_GT(greedy.size(), prompt.size() + 8);
  // The first generated token not seen before in the answer.
  size_t stop_at = prompt.size() + 4;
  while (std::find(greedy.begin() + static_cast<std::ptrdiff_t>(prompt.size()),
                   greedy.begin() + static_cast<std::ptrdiff_t>(stop_at),
                   greedy[stop_at]) != greedy.begin() + static_cast<std::ptrdiff_t>(stop_at)) {
    ++stop_at;
  }
  test::TempDir model("stip-eos");
  for (const char* f :
       {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"}) {
    model.Copy(JoinPath(src, f), f);
  }
  model.Write("generation_config.json",
              "{\"eos_token_id\": [2, " + std::to_string(greedy[stop_at]) + "]}");
  Instance in = Transform("kjv-llama-eos-list", model.path());
  EXPECT_EQ(in.bundle->eos_ids(), (std::vector<int64_t>{2, greedy[stop_at]}));
  auto gen = Local(in);
  GenerateResult r = gen->Generate("And God said,", Greedy(40));
  EXPECT_EQ(r.finish_reason, "eos");
  EXPECT_EQ(r.token_ids,
            std::vector<int64_t>(greedy.begin() + static_cast<std::ptrdiff_t>(prompt.size()),
                                 greedy.begin() + static_cast<std::ptrdiff_t>(stop_at)));
  // --ignore-eos: the whole reference answer.
  gen->Reset();
  GenerateOptions all = Greedy(static_cast<int>(greedy.size() - prompt.size()));
  all.stop_at_eos = false;
  r = gen->Generate("And God said,", all);
  EXPECT_EQ(r.token_ids,
            std::vector<int64_t>(greedy.begin() + static_cast<std::ptrdiff_t>(prompt.size()),
                                 greedy.end()));
}

// The ids of `messages` (+ the generation prompt) with the model's template.
std::vector<int64_t> ConversationIds(const ClientBundle& b, const ordered_json& messages) {
  const ChatTemplate* t = b.chat_template();
  return t->Encode(b.tokenizer(), t->Render(messages, true));
}

TEST(ChatMode, PrefillsOnlyTheNewSuffixAndAnswersAsAFreshSession) {
  Instance in = Transform("kjv-llama-chat", ModelDir("kjv-llama-chat"));
  ASSERT_NE(in.bundle->chat_template(), nullptr);
  auto gen = Local(in);
  gen->EnableChat("Speak as the King James Bible.");
  const std::vector<std::string> turns = {"In the beginning", "And the earth was",
                                          "Who is the LORD?"};
  ordered_json messages =
      ordered_json::array({{{"role", "system"}, {"content", "Speak as the King James Bible."}}});
  for (size_t k = 0; k < turns.size(); ++k) {
    SCOPED_TRACE("turn " + std::to_string(k));
    const int64_t cached_before = gen->cached_positions();
    GenerateResult r = gen->Generate(turns[k], Greedy(24));
    messages.push_back({{"role", "user"}, {"content", turns[k]}});
    const std::vector<int64_t> full = ConversationIds(*in.bundle, messages);
    // Only the suffix after what the cache kept was prefilled.
    EXPECT_EQ(r.prefilled_positions + r.reused_positions, static_cast<int64_t>(full.size()));
    EXPECT_LE(r.prompt_ids.size(), static_cast<size_t>(r.prefilled_positions));
    EXPECT_LE(r.reused_positions, cached_before);
    if (k > 0) {
      EXPECT_GT(r.reused_positions, 0);
    }
    // A fresh session given the whole conversation answers the same.
    auto fresh = Local(in);
    GenerateResult f = fresh->GenerateIds(full, Greedy(24));
    EXPECT_EQ(r.token_ids, f.token_ids);
    EXPECT_EQ(r.text, f.text);
    messages.push_back({{"role", "assistant"}, {"content", r.text}});
    EXPECT_EQ(gen->messages(), messages);
  }
}

TEST(ChatMode, ADivergingRenderIsPrefilledFromTheCommonPrefix) {
  Instance in = Transform("kjv-llama-chat", ModelDir("kjv-llama-chat"));
  auto gen = Local(in);
  const ordered_json a =
      ordered_json::array({{{"role", "user"}, {"content", "And God said, Let there be light"}}});
  const ordered_json b =
      ordered_json::array({{{"role", "user"}, {"content", "And God said, Let the waters"}}});
  const std::vector<int64_t> ia = ConversationIds(*in.bundle, a);
  const std::vector<int64_t> ib = ConversationIds(*in.bundle, b);
  size_t common = 0;
  while (common < ia.size() && common < ib.size() && ia[common] == ib[common]) ++common;
  ASSERT_GT(common, 2u);
  ASSERT_LT(common, ia.size());
  GenerateResult ra = gen->GenerateConversation(ia, Greedy(8));
  EXPECT_EQ(ra.reused_positions, 0);
  GenerateResult rb = gen->GenerateConversation(ib, Greedy(8));
  EXPECT_EQ(rb.reused_positions, static_cast<int64_t>(common));
  EXPECT_EQ(rb.prefilled_positions, static_cast<int64_t>(ib.size() - common));
  auto fresh = Local(in);
  EXPECT_EQ(rb.token_ids, fresh->GenerateIds(ib, Greedy(8)).token_ids);
  // The same conversation again: everything but its last position is reused.
  GenerateResult again = gen->GenerateConversation(ib, Greedy(8));
  EXPECT_EQ(again.reused_positions, static_cast<int64_t>(ib.size()) - 1);
  EXPECT_EQ(again.prefilled_positions, 1);
  EXPECT_EQ(again.token_ids, rb.token_ids);
}

TEST(ChatMode, StopsAtTheTemplatesEndOfTurnToken) {
  // The demo model: each answer ends with </s> in the template, and its
  // generation_config.json lists "." as a second end-of-sequence id (the
  // model was never trained on chats and never emits </s>). A fresh
  // session's answer to the rendered prompt shows where the model emits one
  // of them; the chat turn stops there.
  Instance in = Transform("kjv-llama-chat", ModelDir("kjv-llama-chat"));
  auto gen = Local(in);
  gen->EnableChat();
  GenerateResult r = gen->Generate("And God said,", Greedy(200));
  auto fresh = Local(in);
  GenerateOptions all = Greedy(200);
  all.stop_at_eos = false;
  const ordered_json m = ordered_json::array({{{"role", "user"}, {"content", "And God said,"}}});
  GenerateResult f = fresh->GenerateIds(ConversationIds(*in.bundle, m), all);
  std::vector<int64_t> stop = in.bundle->eos_ids();
  EXPECT_EQ(stop, (std::vector<int64_t>{2, 4047}));  // </s> and "."
  auto first_eos =
      std::find_first_of(f.token_ids.begin(), f.token_ids.end(), stop.begin(), stop.end());
  ASSERT_NE(first_eos, f.token_ids.end());
  EXPECT_EQ(r.finish_reason, "eos");
  EXPECT_EQ(r.token_ids, std::vector<int64_t>(f.token_ids.begin(), first_eos));
}

TEST(ChatMode, RefusedWithoutATemplate) {
  Instance in = Transform("kjv-llama", ModelDir("kjv-llama"));
  auto gen = Local(in);
  EXPECT_EQ(in.bundle->chat_template(), nullptr);
  try {
    gen->EnableChat();
    ADD_FAILURE() << "chat mode without a template";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace stip
