// Tokenizer conformance and robustness tests. Reference ids come from Hugging
// Face tokenizers / sentencepiece (tests/data/tokenizers/tokenizer_cases.json,
// made by tok_fixtures.py).
#include "common/tokenizer/tokenizer.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/tokenizer/bpe_tokenizer.h"
#include "tests/temp_dir.h"

namespace stip {
namespace {

using test::TempDir;

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int64_t>;

const std::string kData = STIP_TEST_DATA_DIR "/tokenizers";
const std::string kModels = STIP_MODELS_DIR;
const std::string kKjvGpt2 = kModels + "/kjv-gpt2";
const std::string kKjvLlama = kModels + "/kjv-llama";

const json& Cases() {
  static const json cases = [] {
    std::ifstream in(kData + "/tokenizer_cases.json");
    EXPECT_TRUE(in) << "cannot open tokenizer_cases.json";
    return json::parse(in);
  }();
  return cases;
}

std::vector<std::string> Strings() { return Cases()["strings"].get<std::vector<std::string>>(); }

std::unique_ptr<BpeTokenizer> LoadGpt2() {
  return BpeTokenizer::FromVocabAndMerges(kData + "/encoder.json", kData + "/vocab.bpe",
                                          BpeSpecialTokens::Special({"<|endoftext|>"}));
}

const Tokenizer& Gpt2() {
  static const auto tok = LoadGpt2();
  return *tok;
}
const Tokenizer& KjvGpt2() {
  static const auto tok = Tokenizer::FromDirectory(kKjvGpt2);
  return *tok;
}
const Tokenizer& KjvLlama() {
  static const auto tok = Tokenizer::FromDirectory(kKjvLlama);
  return *tok;
}

EncodeOptions AllowSpecial() {
  EncodeOptions o;
  o.allow_special = true;
  return o;
}

std::string Show(const std::string& s) { return json(s).dump(); }

bool ValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

// Expects `fn` to throw stip::Error with `code` and a message containing all
// of `parts`.
void ExpectError(const std::function<void()>& fn, ErrorCode code,
                 const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no stip::Error thrown (expected " << ErrorCodeName(code) << ")";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << ErrorCodeName(e.code()) << ": " << e.what();
    for (const auto& p : parts) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << p << "\"";
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "non-stip exception: " << e.what();
  }
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// GPT-2's byte -> character map, to name byte tokens in tests.
std::string ByteChar(unsigned char b) {
  uint32_t next = 256, cp = 0;
  for (int x = 0; x < 256; ++x) {
    const bool printable = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE;
    const uint32_t c = printable ? x : next++;
    if (x == b) cp = c;
  }
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

// ---------------------------------------------------------------------------
// UTF-8 helper

TEST(CompleteUtf8Prefix, Cases) {
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("abc"), 3u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xE6"), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xE6\x97"), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xE6\x97\xA5"), 4u);
  EXPECT_EQ(CompleteUtf8Prefix("\xF0\x9F\x99"), 0u);
  EXPECT_EQ(CompleteUtf8Prefix("\xF0\x9F\x99\x82"), 4u);
  EXPECT_EQ(CompleteUtf8Prefix("xyz\xF0\x9F\x99\x82\xF0"), 7u);
  // Invalid bytes count as complete.
  EXPECT_EQ(CompleteUtf8Prefix("\x80"), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xE0\x80"), 3u);  // overlong
  EXPECT_EQ(CompleteUtf8Prefix("a\xED\xA0"), 3u);  // surrogate
  EXPECT_EQ(CompleteUtf8Prefix("\xC0"), 1u);       // never valid
  EXPECT_EQ(CompleteUtf8Prefix("\xF5\x80"), 2u);   // beyond U+10FFFF
  EXPECT_EQ(CompleteUtf8Prefix("\xE6\x41"), 2u);   // broken by ASCII
  EXPECT_EQ(CompleteUtf8Prefix("\xE6\x97\xA5\xE6\x97"), 3u);
}

// ---------------------------------------------------------------------------
// Real GPT-2 vocabulary (encoder.json + vocab.bpe)

TEST(Gpt2Real, MatchesHuggingFace) {
  const auto strings = Strings();
  const auto& expected = Cases()["gpt2_real"];
  const auto& decode_ok = Cases()["gpt2_real_decode_ok"];
  ASSERT_EQ(strings.size(), 28u);
  ASSERT_EQ(expected.size(), strings.size());
  const Tokenizer& tok = Gpt2();
  EXPECT_EQ(tok.kind(), "bpe");
  EXPECT_EQ(tok.vocab_size(), 50257);
  EXPECT_TRUE(tok.IsSpecial(50256));
  EXPECT_FALSE(tok.IsSpecial(50255));
  for (size_t i = 0; i < strings.size(); ++i) {
    const std::string& s = strings[i];
    // The reference matched special-token text (Hugging Face's default).
    const Ids ids = tok.Encode(s, AllowSpecial());
    EXPECT_EQ(ids, expected[i].get<Ids>()) << "string " << i << ": " << Show(s);
    // Hugging Face's decode skips special tokens.
    EXPECT_EQ(tok.Decode(ids, /*skip_special=*/true) == s, decode_ok[i].get<bool>())
        << "string " << i << ": " << Show(s);
    EXPECT_EQ(tok.Decode(ids), s) << "string " << i;
  }
}

TEST(Gpt2Real, SpecialTokenTextIsPlainTextByDefault) {
  const Tokenizer& tok = Gpt2();
  for (const std::string& s :
       std::vector<std::string>{"<|endoftext|>", "a<|endoftext|>b", "x <|endoftext|> y"}) {
    const Ids ids = tok.Encode(s);
    for (int64_t id : ids) EXPECT_NE(id, 50256) << Show(s);
    EXPECT_GT(ids.size(), 1u);
    EXPECT_EQ(tok.Decode(ids, true), s);
  }
  EXPECT_EQ(tok.Encode("<|endoftext|>", AllowSpecial()), (Ids{50256}));
  EXPECT_EQ(tok.Decode({50256}), "<|endoftext|>");
  EXPECT_EQ(tok.Decode({50256}, true), "");
}

TEST(Gpt2Real, Gpt2DefaultsSetBosEos) {
  auto tok = BpeTokenizer::FromVocabAndMerges(kData + "/encoder.json", kData + "/vocab.bpe",
                                              BpeSpecialTokens::Gpt2Defaults());
  EXPECT_EQ(tok->bos_id(), 50256);
  EXPECT_EQ(tok->eos_id(), 50256);
  EXPECT_TRUE(tok->IsSpecial(50256));
  EXPECT_EQ(tok->vocab_size(), 50257);
  // GPT2Tokenizer does not add BOS/EOS.
  EXPECT_EQ(tok->Encode("Hello world"), (Ids{15496, 995}));
}

TEST(Gpt2Real, EncodeIsFast) {
  const Tokenizer& tok = Gpt2();
  std::string text;
  for (const auto& s : Strings()) text += s + "\n";
  while (text.size() < 4096) text += "And God said, Let there be light: and there was light. ";
  auto fresh = LoadGpt2();  // empty cache
  auto t0 = std::chrono::steady_clock::now();
  const Ids cold = fresh->Encode(text, AllowSpecial());
  auto t1 = std::chrono::steady_clock::now();
  constexpr int kRuns = 200;
  for (int i = 0; i < kRuns; ++i) {
    ASSERT_EQ(tok.Encode(text, AllowSpecial()), cold);
  }
  auto t2 = std::chrono::steady_clock::now();
  const double cold_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  const double warm_ms = std::chrono::duration<double, std::milli>(t2 - t1).count() / kRuns;
  std::printf("encode %zu bytes -> %zu ids: cold %.3f ms, warm %.3f ms\n", text.size(), cold.size(),
              cold_ms, warm_ms);
  EXPECT_LT(warm_ms, 20.0);  // generous: sanitizer / debug builds
  EXPECT_EQ(tok.Decode(cold), text);
}

TEST(Gpt2Real, LongWordAndConcurrency) {
  const Tokenizer& tok = Gpt2();
  // A long run without spaces goes through the merge heap, not the cache.
  std::string word;
  for (int i = 0; i < 5000; ++i) word += static_cast<char>('a' + (i * 7) % 26);
  const Ids ids = tok.Encode(word);
  EXPECT_EQ(tok.Decode(ids), word);

  const auto strings = Strings();
  const auto& expected = Cases()["gpt2_real"];
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < strings.size(); ++i) {
          if (tok.Encode(strings[i], AllowSpecial()) != expected[i].get<Ids>()) ++failures[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

// ---------------------------------------------------------------------------
// Demo byte-level BPE (models/kjv-gpt2)

TEST(KjvGpt2, MatchesHuggingFace) {
  const auto strings = Strings();
  const auto& expected = Cases()["kjv_gpt2"];
  const Tokenizer& tok = KjvGpt2();
  EXPECT_EQ(tok.kind(), "bpe");
  EXPECT_EQ(tok.vocab_size(), 4096);
  // Its only added token is special: "<|endoftext|>" = 0 = bos = eos.
  EXPECT_TRUE(tok.IsSpecial(0));
  EXPECT_FALSE(tok.IsSpecial(1));
  EXPECT_EQ(tok.bos_id(), 0);
  EXPECT_EQ(tok.eos_id(), 0);
  for (size_t i = 0; i < strings.size(); ++i) {
    const Ids ids = tok.Encode(strings[i], AllowSpecial());
    EXPECT_EQ(ids, expected[i].get<Ids>()) << "string " << i << ": " << Show(strings[i]);
    EXPECT_EQ(tok.Decode(ids), strings[i]);
  }
  // Default: typed special-token text stays text.
  const Ids plain = tok.Encode("a<|endoftext|>b");
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 0), 0);
  EXPECT_EQ(tok.Decode(plain), "a<|endoftext|>b");
  EXPECT_EQ(tok.Decode(expected[15].get<Ids>(), true), "ab");
}

TEST(KjvGpt2, VocabAndMergesGiveSameIdsAsTokenizerJson) {
  const Tokenizer& from_json = KjvGpt2();
  auto from_files = BpeTokenizer::FromVocabAndMerges(
      kKjvGpt2 + "/vocab.json", kKjvGpt2 + "/merges.txt",
      BpeSpecialTokens::FromConfigFile(kKjvGpt2 + "/tokenizer_config.json"));
  // Through the factory too: a directory with only vocab.json + merges.txt.
  TempDir dir;
  dir.Copy(kKjvGpt2 + "/vocab.json", "vocab.json");
  dir.Copy(kKjvGpt2 + "/merges.txt", "merges.txt");
  dir.Copy(kKjvGpt2 + "/tokenizer_config.json", "tokenizer_config.json");
  auto from_dir = Tokenizer::FromDirectory(dir.path());
  for (const Tokenizer* tok : std::vector<const Tokenizer*>{from_files.get(), from_dir.get()}) {
    EXPECT_EQ(tok->vocab_size(), from_json.vocab_size());
    EXPECT_EQ(tok->bos_id(), from_json.bos_id());
    EXPECT_EQ(tok->eos_id(), from_json.eos_id());
    EXPECT_TRUE(tok->IsSpecial(0));
    for (const auto& s : Strings()) {
      EXPECT_EQ(tok->Encode(s), from_json.Encode(s)) << Show(s);
      EXPECT_EQ(tok->Encode(s, AllowSpecial()), from_json.Encode(s, AllowSpecial())) << Show(s);
    }
  }
  // Without tokenizer_config.json: GPT-2's defaults find <|endoftext|>.
  fs::remove(dir.File("tokenizer_config.json"));
  auto bare = Tokenizer::FromDirectory(dir.path());
  EXPECT_EQ(bare->eos_id(), 0);
  EXPECT_EQ(bare->Encode("a<|endoftext|>b", AllowSpecial()), (Ids{65, 0, 66}));
}

TEST(KjvGpt2, NonSpecialAddedTokensAndTemplates) {
  // A non-special added token is always matched; a TemplateProcessing
  // post-processor adds its tokens.
  json j = json::parse(ReadAll(kKjvGpt2 + "/tokenizer.json"));
  j["added_tokens"].push_back({{"id", 4096},
                               {"content", "LORD GOD"},
                               {"single_word", false},
                               {"lstrip", false},
                               {"rstrip", false},
                               {"normalized", false},
                               {"special", false}});
  j["added_tokens"].push_back({{"id", 4097},
                               {"content", "<mask>"},
                               {"single_word", false},
                               {"lstrip", true},
                               {"rstrip", false},
                               {"normalized", false},
                               {"special", true}});
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0],
                                                       "tokens": ["<|endoftext|>"]}}})");
  TempDir dir;
  dir.Write("tokenizer.json", j.dump());
  auto tok = Tokenizer::FromDirectory(dir.path());
  EXPECT_EQ(tok->vocab_size(), 4098);
  EXPECT_FALSE(tok->IsSpecial(4096));
  EXPECT_TRUE(tok->IsSpecial(4097));
  const Ids ids = tok->Encode("the LORD GOD said");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[0], 0);  // the template's <|endoftext|>
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 4096), 1);
  EXPECT_EQ(tok->Decode(ids, true), "the LORD GOD said");
  EXPECT_EQ(tok->Decode(ids), "<|endoftext|>the LORD GOD said");
  EncodeOptions no_special;
  no_special.add_special_tokens = false;
  EXPECT_NE(tok->Encode("x", no_special).front(), 0);
  EXPECT_EQ(tok->bos_id(), 0);
  // lstrip: the special token takes the spaces on its left.
  no_special.allow_special = true;
  Ids expected = tok->Encode("a", no_special);
  expected.push_back(4097);
  for (int64_t id : tok->Encode("b ", no_special)) expected.push_back(id);
  EXPECT_EQ(tok->Encode("a  <mask>b ", no_special), expected);
  no_special.allow_special = false;
  const Ids typed = tok->Encode("a <mask>");
  EXPECT_EQ(std::count(typed.begin(), typed.end(), 4097), 0);
}

// ---------------------------------------------------------------------------
// Demo SentencePiece (models/kjv-llama)

TEST(KjvLlama, MatchesSentencePiece) {
  const auto strings = Strings();
  const auto& expected = Cases()["kjv_llama_with_bos"];
  const auto& decoded = Cases()["kjv_llama_decode"];
  const Tokenizer& tok = KjvLlama();
  EXPECT_EQ(tok.kind(), "sentencepiece");
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_TRUE(tok.IsSpecial(1));
  EXPECT_TRUE(tok.IsSpecial(2));
  EXPECT_FALSE(tok.IsSpecial(100));
  for (size_t i = 0; i < strings.size(); ++i) {
    const Ids ids = tok.Encode(strings[i]);
    EXPECT_EQ(ids, expected[i].get<Ids>()) << "string " << i << ": " << Show(strings[i]);
    EXPECT_EQ(tok.Decode(ids, true), decoded[i].get<std::string>()) << "string " << i;
    // Without BOS, skip_special makes no difference.
    const Ids body(ids.begin() + 1, ids.end());
    EXPECT_EQ(tok.Decode(body), decoded[i].get<std::string>()) << "string " << i;
  }
}

TEST(KjvLlama, SpecialTokens) {
  const Tokenizer& tok = KjvLlama();
  // "<s>" typed by a user is text.
  const Ids ids = tok.Encode("<s>hi</s>");
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 0);
  EXPECT_EQ(tok.Decode(ids, true), "<s>hi</s>");
  // With allow_special the control tokens are matched.
  const Ids special = tok.Encode("<s>hi</s>", AllowSpecial());
  EXPECT_EQ(special.front(), 1);
  EXPECT_EQ(special[1], 1);
  EXPECT_EQ(special.back(), 2);
  EncodeOptions bare;
  bare.add_special_tokens = false;
  EXPECT_EQ(tok.Encode("", bare), Ids{});
  const Ids with_bos = tok.Encode("In the beginning");
  EXPECT_EQ(tok.Encode("In the beginning", bare), Ids(with_bos.begin() + 1, with_bos.end()));
  // skip_special=false writes special tokens out.
  const Ids hello = tok.Encode("Hello world");
  EXPECT_EQ(tok.Decode(hello), "<s> Hello world");
  Ids with_eos = hello;
  with_eos.push_back(2);
  EXPECT_EQ(tok.Decode(with_eos, true), "Hello world");
  EXPECT_EQ(tok.Decode(with_eos), "<s> Hello world</s>");
}

TEST(KjvLlama, ConfigControlsBosEos) {
  TempDir dir;
  dir.Copy(kKjvLlama + "/tokenizer.model", "tokenizer.model");
  dir.Write("tokenizer_config.json",
            R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>",
                "add_bos_token": false, "add_eos_token": true})");
  auto tok = Tokenizer::FromDirectory(dir.path());
  const Ids ids = tok->Encode("Hello");
  EXPECT_NE(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  // No config: add BOS, not EOS.
  fs::remove(dir.File("tokenizer_config.json"));
  auto plain = Tokenizer::FromDirectory(dir.path());
  EXPECT_EQ(plain->Encode("Hello"), KjvLlama().Encode("Hello"));
}

TEST(KjvLlama, NonByteLevelTokenizerJsonFallsBackToModel) {
  // LLaMA directories often hold a tokenizer.json mirroring tokenizer.model.
  TempDir dir;
  dir.Copy(kKjvLlama + "/tokenizer.model", "tokenizer.model");
  dir.Write("tokenizer.json", R"({"model": {"type": "WordLevel", "vocab": {"a": 0}}})");
  auto tok = Tokenizer::FromDirectory(dir.path());
  EXPECT_EQ(tok->kind(), "sentencepiece");
}

// ---------------------------------------------------------------------------
// StreamDecoder

void CheckStream(const Tokenizer& tok, const std::string& text, bool allow_special = false) {
  EncodeOptions options;
  options.allow_special = allow_special;
  const Ids ids = tok.Encode(text, options);
  for (bool skip : {true, false}) {
    StreamDecoder stream(tok, skip);
    std::string out;
    for (int64_t id : ids) {
      const std::string piece = stream.Push(id);
      EXPECT_TRUE(ValidUtf8(piece)) << tok.kind() << " " << Show(text) << " piece " << Show(piece);
      out += piece;
    }
    out += stream.Flush();
    EXPECT_EQ(out, tok.Decode(ids, skip)) << tok.kind() << " " << Show(text);
    EXPECT_EQ(stream.Flush(), "");
  }
}

TEST(StreamDecoder, AllStringsAllTokenizers) {
  for (const Tokenizer* tok : {&Gpt2(), &KjvGpt2(), &KjvLlama()}) {
    for (const auto& s : Strings()) CheckStream(*tok, s);
    CheckStream(*tok, "a<|endoftext|>b", /*allow_special=*/true);
  }
}

TEST(StreamDecoder, LongMultilingualText) {
  // Longer than the decoder's window, so that it is cut several times.
  std::string text;
  for (int i = 0; i < 12; ++i) {
    text +=
        "In the beginning 神は天と地を創造された。🙂🚀 Привет, мир! "
        "👨‍👩‍👧 "
        "مرحبا ";
  }
  for (const Tokenizer* tok : {&Gpt2(), &KjvGpt2(), &KjvLlama()}) {
    const Ids ids = tok->Encode(text);
    ASSERT_GT(ids.size(), 100u);
    StreamDecoder stream(*tok);
    std::string out;
    size_t empty_pushes = 0;
    for (int64_t id : ids) {
      const std::string piece = stream.Push(id);
      ASSERT_TRUE(ValidUtf8(piece)) << tok->kind() << " piece " << Show(piece);
      if (piece.empty()) ++empty_pushes;
      out += piece;
    }
    out += stream.Flush();
    // (SentencePiece drops the trailing space.)
    EXPECT_EQ(out, tok->Decode(ids, true)) << tok->kind();
    EXPECT_EQ(out.substr(0, text.size() - 1), text.substr(0, text.size() - 1)) << tok->kind();
    // Some tokens hold only part of a character.
    EXPECT_GT(empty_pushes, 0u) << tok->kind();

    stream.Reset();
    EXPECT_EQ(stream.Push(ids[0]) + stream.Flush(), tok->Decode({ids[0]}, true));
  }
}

TEST(StreamDecoder, PartialAndInvalidSequences) {
  auto tok = LoadGpt2();
  auto byte_id = [&](unsigned char b) { return *tok->TokenToId(ByteChar(b)); };
  StreamDecoder stream(*tok);
  // 日 = E6 97 A5, one byte token at a time.
  EXPECT_EQ(stream.Push(byte_id(0xE6)), "");
  EXPECT_EQ(stream.Push(byte_id(0x97)), "");
  EXPECT_EQ(stream.Push(byte_id(0xA5)), "日");
  // A sequence broken by ASCII is emitted as U+FFFD.
  EXPECT_EQ(stream.Push(byte_id(0xE6)), "");
  EXPECT_EQ(stream.Push(byte_id('A')),
            "\xEF\xBF\xBD"
            "A");
  // An unfinished character at the end becomes U+FFFD on Flush.
  EXPECT_EQ(stream.Push(byte_id(0xF0)), "");
  EXPECT_EQ(stream.Push(byte_id(0x9F)), "");
  EXPECT_EQ(stream.Flush(), "\xEF\xBF\xBD");
  // A lone continuation byte cannot become valid: U+FFFD at once.
  stream.Reset();
  EXPECT_EQ(stream.Push(byte_id(0x80)), "\xEF\xBF\xBD");
  // An unknown id throws and leaves the decoder usable.
  ExpectError([&] { stream.Push(123456789); }, ErrorCode::kInvalidArgument, {"123456789"});
  EXPECT_EQ(stream.Push(byte_id('z')), "z");
}

TEST(StreamDecoder, SentencePieceByteFallback) {
  const Tokenizer& tok = KjvLlama();
  // Japanese is not in the demo vocabulary: byte-fallback pieces.
  const Ids ids = tok.Encode("日本");
  ASSERT_GT(ids.size(), 4u);
  // Decode of a prefix that ends inside a character returns its bytes.
  const Ids partial(ids.begin(), ids.end() - 1);
  const std::string bytes = tok.Decode(partial, true);
  EXPECT_LT(CompleteUtf8Prefix(bytes), bytes.size());
  StreamDecoder stream(tok);
  std::string out;
  for (int64_t id : ids) out += stream.Push(id);
  EXPECT_EQ(out + stream.Flush(), "日本");
}

// ---------------------------------------------------------------------------
// Errors

TEST(Errors, MissingDirectoryAndFiles) {
  ExpectError([] { Tokenizer::FromDirectory("/nonexistent/stip-tokenizer"); }, ErrorCode::kNotFound,
              {"/nonexistent/stip-tokenizer"});
  TempDir dir;
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kNotFound,
              {dir.path(), "tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model"});
  dir.Copy(kKjvGpt2 + "/vocab.json", "vocab.json");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kNotFound, {"merges.txt"});
  ExpectError(
      [&] { BpeTokenizer::FromVocabAndMerges(dir.File("vocab.json"), dir.File("nope.txt")); },
      ErrorCode::kNotFound, {"nope.txt"});
  ExpectError([&] { LoadSentencePieceTokenizer(dir.File("tokenizer.model")); },
              ErrorCode::kNotFound, {"tokenizer.model"});
}

TEST(Errors, MalformedTokenizerJson) {
  TempDir dir;
  const std::string path = dir.File("tokenizer.json");
  dir.Write("tokenizer.json", "{\"model\": {\"type\": \"BPE\", ");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "malformed JSON"});
  dir.Write("tokenizer.json", "[]");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument, {path});
  dir.Write("tokenizer.json", R"({"version": "1.0"})");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "model"});
  dir.Write("tokenizer.json", R"({"model": {"type": "WordLevel", "vocab": {"a": 0}}})");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kUnimplemented,
              {path, "WordLevel"});
  dir.Write("tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "WordPiece", "[UNK]"});
  dir.Write("tokenizer.json", R"({"model": {"type": "Unigram", "vocab": []}})");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "Unigram", "empty"});
  dir.Write("tokenizer.json", R"({"model": {"type": "Unigram", "vocab": [["a", "x"]]}})");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "vocab[0]"});

  json j = json::parse(ReadAll(kKjvGpt2 + "/tokenizer.json"));
  json bad = j;
  bad["model"]["merges"].push_back({"Ġqqq", "zz"});
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "Ġqqq", "not in the vocabulary"});
  bad = j;
  bad["model"]["merges"][5] = "a b c";
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "merges[5]"});
  bad = j;
  bad["model"]["vocab"]["t"] = "seven";
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "\"t\""});
  bad = j;
  bad["added_tokens"][0].erase("id");
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "added token"});
  bad = j;
  bad["added_tokens"][0]["special"] = "yes";
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "\"special\" must be true or false"});
  bad = j;
  bad["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [3, 4]})");
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "pre_tokenizer", "expected an object"});
  bad = j;
  bad["normalizer"] = {{"type", "Nmt"}};
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kUnimplemented,
              {path, "normalizer Nmt"});
  bad = j;
  bad["pre_tokenizer"] = {{"type", "UnicodeScripts"}};
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kUnimplemented,
              {path, "pre_tokenizer UnicodeScripts"});
  bad = j;
  bad["decoder"] = {{"type", "Nope"}};
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kUnimplemented,
              {path, "decoder Nope"});
  bad = j;
  bad["post_processor"] = {{"type", "TemplateProcessing"}, {"single", "$A [NOPE]"}};
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "[NOPE]"});
  bad = j;
  bad["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Sideways"}};
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "Sideways"});
  bad = j;
  bad["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})");
  dir.Write("tokenizer.json", bad.dump());
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {path, "(unclosed"});
  // A malformed tokenizer_config.json is reported too.
  dir.Write("tokenizer.json", j.dump());
  dir.Write("tokenizer_config.json", "{\"bos_token\": 3}");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {"tokenizer_config.json", "bos_token"});
}

TEST(Errors, MalformedVocabAndMerges) {
  TempDir dir;
  dir.Write("vocab.json", R"({"a": 0, "b": 1, "ab": 2, "Ġ": 3})");
  dir.Write("merges.txt", "#version: 0.2\na b\nab c\n");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {dir.File("merges.txt") + ":3", "\"c\"", "not in the vocabulary"});
  dir.Write("merges.txt", "#version: 0.2\na b\nb a\n");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {"merges.txt:3", "\"ba\""});
  dir.Write("merges.txt", "a b\nab\n");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {"merges.txt:2", "two tokens"});
  dir.Write("merges.txt", "a b\n");
  dir.Write("vocab.json", R"(["a", "b"])");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {"vocab.json", "object"});
  dir.Write("vocab.json", R"({"a": -4})");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {"vocab.json", "\"a\""});
  dir.Write("vocab.json", "{\"a\": 0,,}");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {"vocab.json", "malformed JSON"});
  // A tiny valid one works.
  dir.Write("vocab.json", R"({"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4})");
  dir.Write("merges.txt", "a b\nĠ ab\n");
  auto tok = Tokenizer::FromDirectory(dir.path());
  EXPECT_EQ(tok->Encode("ab ab"), (Ids{2, 4}));
  // Bytes missing from the vocabulary are dropped, as Hugging Face does.
  EXPECT_EQ(tok->Encode("abz"), (Ids{2}));
}

TEST(Errors, CorruptSentencePieceModel) {
  TempDir dir;
  dir.Write("tokenizer.model", "this is not a protobuf \x01\x02\x03");
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {dir.File("tokenizer.model")});
  const std::string model = ReadAll(kKjvLlama + "/tokenizer.model");
  dir.Write("tokenizer.model", model.substr(0, model.size() / 2));
  ExpectError([&] { Tokenizer::FromDirectory(dir.path()); }, ErrorCode::kInvalidArgument,
              {dir.File("tokenizer.model")});
}

TEST(Errors, UnknownIdsInDecode) {
  for (const Tokenizer* tok : {&Gpt2(), &KjvGpt2(), &KjvLlama()}) {
    ExpectError([&] { tok->Decode({5, 999999}); }, ErrorCode::kInvalidArgument, {"999999"});
    ExpectError([&] { tok->Decode({-1}); }, ErrorCode::kInvalidArgument, {"-1"});
    ExpectError([&] { tok->Decode({tok->vocab_size()}); }, ErrorCode::kInvalidArgument,
                {std::to_string(tok->vocab_size())});
  }
}

TEST(Errors, InvalidUtf8Input) {
  for (const Tokenizer* tok : {&Gpt2(), &KjvGpt2(), &KjvLlama()}) {
    for (const std::string& bad :
         {std::string("abc\xff"), std::string("\xE6\x97"), std::string("x\xED\xA0\x80y"),
          std::string("\xC0\xAF"), std::string("ok \x80 no"), std::string("\xF4\x90\x80\x80")}) {
      ExpectError([&] { tok->Encode(bad); }, ErrorCode::kInvalidArgument, {"UTF-8"});
      ExpectError([&] { tok->Encode(bad, AllowSpecial()); }, ErrorCode::kInvalidArgument,
                  {"UTF-8"});
    }
    // NUL bytes are valid UTF-8.
    const std::string nul("a\0b", 3);
    EXPECT_EQ(tok->Decode(tok->Encode(nul), true).find('b') != std::string::npos, true);
  }
}

// ---------------------------------------------------------------------------
// BERT's classic layout (vocab.txt + tokenizer_config.json), pairs and [MASK].
// (tokenizer_oracle_test compares it with the Rust tokenizers string by
// string; these pin the interface the encoders use.)

namespace bert {

const std::string kBert = std::string(STIP_MODELS_DIR) + "/bert-kjv";

TEST(BertKjv, PairsTypesAndMaskPositions) {
  auto tok = Tokenizer::FromDirectory(kBert);
  EXPECT_EQ(tok->kind(), "wordpiece");
  const auto cls = tok->SpecialTokenId("cls"), sep = tok->SpecialTokenId("sep"),
             mask = tok->SpecialTokenId("mask"), pad = tok->SpecialTokenId("pad");
  ASSERT_TRUE(cls && sep && mask && pad);
  EXPECT_EQ(tok->TokenToId("[CLS]"), cls);
  EXPECT_EQ(tok->TokenToId("[MASK]"), mask);
  EXPECT_TRUE(tok->IsSpecial(*mask));

  EncodeOptions with_special;
  with_special.allow_special = true;
  const TokenizedPair p = tok->EncodePair("In the beginning", "God created [MASK].", with_special);
  ASSERT_EQ(p.ids.size(), p.type_ids.size());
  ASSERT_GE(p.ids.size(), 6u);
  EXPECT_EQ(p.ids.front(), *cls);
  EXPECT_EQ(p.ids.back(), *sep);
  const std::vector<size_t> seps = PositionsOf(p.ids, *sep);
  ASSERT_EQ(seps.size(), 2u);
  for (size_t i = 0; i < p.ids.size(); ++i) EXPECT_EQ(p.type_ids[i], i <= seps[0] ? 0 : 1) << i;
  EXPECT_EQ(PositionsOf(p.ids, *mask).size(), 1u);
  EXPECT_EQ(tok->Decode(p.ids, true), "in the beginning god created.");

  // Typed by a user (allow_special off), "[MASK]" is text, not the token.
  const Ids typed = tok->Encode("God created [MASK].");
  EXPECT_TRUE(PositionsOf(typed, *mask).empty());
}

TEST(Pipeline, FuzzSeedsLoadAndRoundTrip) {
  // The fuzzer seeds cover every component kind; each loads and encodes.
  const std::string dir = std::string(STIP_SOURCE_DIR_FOR_TESTS) + "/fuzz/corpus/tokenizer_json/";
  for (const char* name : {"bpe_byte_fallback.json", "wordpiece_bert.json",
                           "unigram_metaspace.json", "bpe_prefix_suffix.json"}) {
    TempDir d;
    d.Write("tokenizer.json", ReadAll(dir + name));
    auto tok = Tokenizer::FromDirectory(d.path());
    EncodeOptions o;
    o.allow_special = true;
    const Ids ids = tok->Encode("Hello abab world", o);
    EXPECT_FALSE(ids.empty()) << name;
    for (int64_t id : ids) EXPECT_LT(id, tok->vocab_size()) << name;
    EXPECT_NO_THROW(tok->Decode(ids)) << name;
  }
}

}  // namespace bert

}  // namespace
}  // namespace stip
