// stip-tokenize-bench: encodes a text file paragraph by paragraph with the
// tokenizer of a directory and prints one JSON line: bytes, ids, the best of
// three rounds in seconds, MB/s, and a checksum of the ids (to check that
// tools/bench_tokenizers.sh's Rust side produced the same ids).
// Usage: stip-tokenize-bench DIR TEXT_FILE [ROUNDS]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/tokenizer/tokenizer.h"

namespace {

// Paragraphs: split at blank lines (each keeps its text, newlines included).
std::vector<std::string> Paragraphs(const std::string& text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find("\n\n", pos);
    end = end == std::string::npos ? text.size() : end + 2;
    out.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: stip-tokenize-bench DIR TEXT_FILE [ROUNDS]\n");
    return 2;
  }
  try {
    auto tok = stip::Tokenizer::FromDirectory(argv[1]);
    std::ifstream in(argv[2], std::ios::binary);
    if (!in) throw stip::NotFound(std::string("cannot read ") + argv[2]);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::vector<std::string> paras = Paragraphs(ss.str());
    const int rounds = argc > 3 ? std::atoi(argv[3]) : 3;
    double best = 1e30;
    size_t bytes = 0, ids = 0;
    uint64_t checksum = 0;
    stip::EncodeOptions options;
    options.add_special_tokens = false;
    options.allow_special = true;  // (as Hugging Face encodes by default)
    for (int r = 0; r < rounds; ++r) {
      bytes = ids = 0;
      checksum = 0;
      const auto t0 = std::chrono::steady_clock::now();
      for (const std::string& p : paras) {
        const std::vector<int64_t> v = tok->Encode(p, options);
        bytes += p.size();
        for (int64_t id : v)
          checksum = (checksum * 1000003 + static_cast<uint64_t>(id)) % 1000000007;
        ids += v.size();
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, s);
    }
    std::printf(
        "{\"kind\": \"%s\", \"bytes\": %zu, \"ids\": %zu, \"seconds\": %.4f, \"mb_per_s\": %.3f, "
        "\"checksum\": %llu}\n",
        tok->kind().c_str(), bytes, ids, best, bytes / best / 1e6,
        static_cast<unsigned long long>(checksum));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stip-tokenize-bench: %s\n", e.what());
    return 1;
  }
}
