// Decoders of tokenizer.json (pipeline.h): ByteLevel, Metaspace, Replace,
// ByteFallback, Fuse, Strip, WordPiece, BPEDecoder, CTC, Sequence; each is
// Hugging Face's decode_chain (tokens in, tokens out). Text stays bytes:
// ByteLevel and ByteFallback produce raw bytes, so that a decoder that ends
// inside a UTF-8 character (streaming) gets its bytes, not U+FFFD.
#include "common/error.h"
#include "common/tokenizer/internal.h"
#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/unicode.h"

namespace stip::tokenizer_pipeline {
namespace {

class ByteLevelDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string out;
    std::string bytes;
    for (const std::string& t : *tokens) {
      // A token whose characters are all in the byte-level alphabet becomes
      // those bytes; any other stays as it is.
      bytes.clear();
      bool all = true;
      size_t i = 0;
      while (i < t.size()) {
        const CheckedChar c = CheckedNext(t, &i);
        const int b = c.valid ? ByteOfByteLevelChar(c.cp) : -1;
        if (b < 0) {
          all = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      out += all ? bytes : t;
    }
    tokens->assign(1, std::move(out));
  }

 private:
  struct CheckedChar {
    bool valid;
    uint32_t cp;
  };
  static CheckedChar CheckedNext(const std::string& s, size_t* i) {
    const auto lead = static_cast<unsigned char>(s[*i]);
    const size_t n = unicode::CharLength(lead);
    if ((lead & 0xC0) == 0x80 || *i + n > s.size()) {
      *i += 1;
      return {false, 0};
    }
    return {true, unicode::Next(s, i)};
  }
};

class Metaspace final : public Decoder {
 public:
  Metaspace(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      std::string out;
      out.reserve(t.size());
      size_t pos = 0;
      while (pos < t.size()) {
        if (t.compare(pos, replacement_.size(), replacement_) == 0) {
          // (Hugging Face drops every one in the first token.)
          if (!(i == 0 && strip_first_)) out.push_back(' ');
          pos += replacement_.size();
        } else {
          out.push_back(t[pos++]);
        }
      }
      t = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class Replace final : public Decoder {
 public:
  Replace(const json& pattern, std::string content, const std::string& source)
      : pattern_(pattern, source), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& t : *tokens) {
      // (Raw bytes from an earlier ByteLevel or ByteFallback may not be
      // UTF-8; the regex engine needs UTF-8, so such a token is left alone.)
      if (tokenizer_internal::FindInvalidUtf8(t) == std::string::npos) {
        t = pattern_.ReplaceAll(t, content_);
      }
    }
  }

 private:
  Pattern pattern_;
  std::string content_;
};

// <0xXX> tokens become their bytes.
class ByteFallback final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string bytes;
    auto flush = [&] {
      if (!bytes.empty()) out.push_back(std::move(bytes)), bytes.clear();
    };
    for (std::string& t : *tokens) {
      int b = ByteOf(t);
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    *tokens = std::move(out);
  }

 private:
  static int Hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  }
  static int ByteOf(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    const int hi = Hex(t[3]), lo = Hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class Fuse final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string out;
    for (const std::string& t : *tokens) out += t;
    tokens->assign(1, std::move(out));
  }
};

class Strip final : public Decoder {
 public:
  Strip(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    const size_t n = content_.size();
    for (std::string& t : *tokens) {
      size_t begin = 0, end = t.size();
      for (size_t k = 0; k < start_ && begin + n <= end && t.compare(begin, n, content_) == 0;
           ++k) {
        begin += n;
      }
      for (size_t k = 0; k < stop_ && end >= begin + n && t.compare(end - n, n, content_) == 0;
           ++k) {
        end -= n;
      }
      t = t.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

std::string ReplaceAllLiteral(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t pos = 0;
  for (size_t at; (at = s.find(from, pos)) != std::string::npos; pos = at + from.size()) {
    out.append(s, pos, at - pos);
    out += to;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// Hugging Face's decoders::wordpiece::cleanup.
std::string Cleanup(std::string s) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},   {" ?", "?"},     {" !", "!"},    {" ,", ","},
      {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},  {" do not", " don't"},
      {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) s = ReplaceAllLiteral(std::move(s), from, to);
  return s;
}

class WordPieceDecoder final : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup)
      : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      if (i != 0) {
        if (t.compare(0, prefix_.size(), prefix_) == 0) {
          t = ReplaceFirst(t);
        } else {
          t.insert(0, " ");
        }
      }
      if (cleanup_) t = Cleanup(std::move(t));
    }
  }

 private:
  std::string ReplaceFirst(const std::string& t) const {
    // Hugging Face: token.replacen(prefix, "", 1).
    const size_t at = t.find(prefix_);
    if (at == std::string::npos || prefix_.empty()) return t;
    return t.substr(0, at) + t.substr(at + prefix_.size());
  }
  std::string prefix_;
  bool cleanup_;
};

// BPEDecoder: the suffix marks word ends.
class BpeDecoder final : public Decoder {
 public:
  explicit BpeDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      t = ReplaceAllLiteral(t, suffix_, i + 1 == tokens->size() ? "" : " ");
    }
  }

 private:
  std::string suffix_;
};

class Ctc final : public Decoder {
 public:
  Ctc(std::string pad, std::string delimiter, bool cleanup)
      : pad_(std::move(pad)), delimiter_(std::move(delimiter)), cleanup_(cleanup) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    for (size_t i = 0; i < tokens->size(); ++i) {
      if (i > 0 && (*tokens)[i] == (*tokens)[i - 1]) continue;  // dedup
      std::string t = ReplaceAllLiteral((*tokens)[i], pad_, "");
      if (cleanup_) t = ReplaceAllLiteral(Cleanup(std::move(t)), delimiter_, " ");
      if (!t.empty()) out.push_back(std::move(t));
    }
    *tokens = std::move(out);
  }

 private:
  std::string pad_, delimiter_;
  bool cleanup_;
};

class Sequence final : public Decoder {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& p : parts_) p->DecodeChain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

std::unique_ptr<Decoder> MakeWordPieceDecoder(const std::string& prefix, bool cleanup) {
  return std::make_unique<WordPieceDecoder>(prefix, cleanup);
}

std::unique_ptr<Decoder> MakeDecoder(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  const std::string type = TypeOf(j);
  const std::string where = source + ": decoder " + type;
  if (!j.is_object()) throw InvalidArgument(where + ": expected an object");
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    bool strip = j.value("add_prefix_space", true);
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      strip = j["prepend_scheme"].get<std::string>() != "never";
    }
    return std::make_unique<Metaspace>(j.value("replacement", std::string("\u2581")), strip);
  }
  if (type == "Replace") {
    if (!j.contains("pattern") || !j.contains("content") || !j["content"].is_string()) {
      throw InvalidArgument(where + " needs \"pattern\" and a string \"content\"");
    }
    return std::make_unique<Replace>(j["pattern"], j["content"].get<std::string>(), where);
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallback>();
  if (type == "Fuse") return std::make_unique<Fuse>();
  if (type == "Strip") {
    const std::string content = j.value("content", std::string(" "));
    if (content.empty()) throw InvalidArgument(where + ": content must not be empty");
    return std::make_unique<Strip>(content, j.value("start", size_t{0}),
                                   j.value("stop", size_t{0}));
  }
  if (type == "WordPiece") {
    return MakeWordPieceDecoder(j.value("prefix", std::string("##")), j.value("cleanup", true));
  }
  if (type == "BPEDecoder") {
    return std::make_unique<BpeDecoder>(j.value("suffix", std::string("</w>")));
  }
  if (type == "CTC") {
    return std::make_unique<Ctc>(j.value("pad_token", std::string("<pad>")),
                                 j.value("word_delimiter_token", std::string("|")),
                                 j.value("cleanup", true));
  }
  if (type == "Sequence") {
    if (!j.contains("decoders") || !j["decoders"].is_array()) {
      throw InvalidArgument(where + " needs a \"decoders\" array");
    }
    std::vector<std::unique_ptr<Decoder>> parts;
    for (const json& d : j["decoders"]) {
      auto part = MakeDecoder(d, source);
      if (part) parts.push_back(std::move(part));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  throw Unimplemented(where + " is not supported");
}

}  // namespace stip::tokenizer_pipeline
