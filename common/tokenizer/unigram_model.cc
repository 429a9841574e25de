// The Unigram model (pipeline.h), as Hugging Face's models::unigram: the
// segmentation of highest total score (Viterbi over a trie of the pieces); a
// character that no piece covers costs min_score - 10 as unk; consecutive unk
// are fused; byte_fallback spells an unknown piece as <0xXX> tokens.
#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>

#include "common/error.h"
#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/unicode.h"

namespace stip::tokenizer_pipeline {
namespace {

constexpr double kUnkPenalty = 10.0;
constexpr size_t kMaxTokens = size_t{1} << 24;
constexpr size_t kCacheCapacity = 10000;
constexpr size_t kMaxCachedWord = 256;

class Unigram final : public Model {
 public:
  Unigram(const json& j, const std::string& source) {
    const std::string where = source + ": model (Unigram)";
    if (!j.contains("vocab") || !j["vocab"].is_array()) {
      throw InvalidArgument(where + ": \"vocab\" must be an array of [piece, score]");
    }
    const json& vocab = j["vocab"];
    if (vocab.empty() || vocab.size() > kMaxTokens) {
      throw InvalidArgument(where + ": the vocabulary is empty or too large");
    }
    std::fill(std::begin(root_), std::end(root_), -1);
    pieces_.reserve(vocab.size());
    scores_.reserve(vocab.size());
    for (size_t i = 0; i < vocab.size(); ++i) {
      const json& e = vocab[i];
      if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number()) {
        throw InvalidArgument(where + ": vocab[" + std::to_string(i) +
                              "] must be [piece, score], got " + e.dump());
      }
      pieces_.push_back(e[0].get<std::string>());
      const double score = e[1].get<double>();
      if (!std::isfinite(score)) {
        throw InvalidArgument(where + ": vocab[" + std::to_string(i) + "] has a non-finite score");
      }
      scores_.push_back(score);
      min_score_ = std::min(min_score_, score);
      token_to_id_.emplace(pieces_.back(), static_cast<int32_t>(i));  // first wins
      if (!pieces_.back().empty()) Insert(pieces_.back(), static_cast<int32_t>(i));
    }
    if (j.contains("unk_id") && !j["unk_id"].is_null()) {
      const int64_t unk = j["unk_id"].get<int64_t>();
      if (unk < 0 || unk >= static_cast<int64_t>(pieces_.size())) {
        throw InvalidArgument(where + ": unk_id " + std::to_string(unk) + " is out of range");
      }
      unk_id_ = static_cast<int32_t>(unk);
    }
    byte_fallback_ = j.value("byte_fallback", false);
    static const char kHex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
      auto it = token_to_id_.find(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">");
      fallback_id_[b] = it == token_to_id_.end() ? -1 : it->second;
    }
  }

  void Tokenize(const Piece& in, std::vector<int64_t>* ids) const override {
    Piece piece = in;
    Materialize(&piece);
    const std::string& s = piece.text;
    if (s.empty()) return;
    const bool cacheable = s.size() <= kMaxCachedWord;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(s);
      if (it != cache_.end()) {
        ids->insert(ids->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int64_t> out;
    Encode(s, &out);
    ids->insert(ids->end(), out.begin(), out.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (cache_.size() < kCacheCapacity) cache_.emplace(s, std::move(out));
    }
  }

  std::optional<int64_t> TokenToId(const std::string& token) const override {
    auto it = token_to_id_.find(token);
    if (it == token_to_id_.end()) return std::nullopt;
    return it->second;
  }
  const std::string* IdToToken(int64_t id) const override {
    if (id < 0 || id >= static_cast<int64_t>(pieces_.size())) return nullptr;
    return &pieces_[id];
  }
  int64_t size() const override { return static_cast<int64_t>(pieces_.size()); }
  std::string kind() const override { return "unigram"; }

 private:
  void Insert(const std::string& s, int32_t id) {
    int32_t node = 0;
    for (unsigned char b : s) {
      auto& kids = children_[node];
      int32_t next = -1;
      for (const auto& [byte, child] : kids) {
        if (byte == b) {
          next = child;
          break;
        }
      }
      if (next < 0) {
        next = static_cast<int32_t>(children_.size());
        children_[node].emplace_back(b, next);
        if (node == 0) root_[b] = next;
        children_.emplace_back();
        terminal_.push_back(-1);
      }
      node = next;
    }
    if (terminal_[node] < 0) terminal_[node] = id;
  }

  void Encode(const std::string& s, std::vector<int64_t>* ids) const {
    struct Node {
      int32_t id = -1;
      double score = 0;
      int64_t starts_at = -1;
    };
    const size_t n = s.size();
    std::vector<Node> best(n + 1);
    const double unk_score = min_score_ - kUnkPenalty;
    size_t start = 0;
    while (start < n) {
      const double base = best[start].score;
      const size_t mblen = unicode::CharLength(static_cast<unsigned char>(s[start]));
      bool has_single = false;
      int32_t node = 0;
      for (size_t k = start; k < n; ++k) {
        const auto b = static_cast<unsigned char>(s[k]);
        int32_t next = -1;
        if (node == 0) {
          next = root_[b];
        } else {
          for (const auto& [byte, child] : children_[node]) {
            if (byte == b) {
              next = child;
              break;
            }
          }
        }
        if (next < 0) break;
        node = next;
        const int32_t id = terminal_[node];
        if (id < 0) continue;
        Node& target = best[k + 1];
        const double cand = base + scores_[id];
        if (target.starts_at < 0 || cand > target.score) {
          target = {id, cand, static_cast<int64_t>(start)};
        }
        if (k + 1 - start == mblen) has_single = true;
      }
      if (!has_single) {
        if (!unk_id_) throw InvalidArgument("Unigram model has no unk_id for text it cannot cover");
        Node& target = best[start + mblen];
        const double cand = base + unk_score;
        if (target.starts_at < 0 || cand > target.score) {
          target = {*unk_id_, cand, static_cast<int64_t>(start)};
        }
      }
      start += mblen;
    }
    // Back from the end; consecutive unk pieces fuse.
    std::vector<std::pair<size_t, size_t>> pieces;  // (start, end), reversed
    size_t end = n;
    bool pending_unk = false;
    size_t unk_end = 0;
    while (end > 0) {
      const Node& node = best[end];
      const auto st = static_cast<size_t>(node.starts_at);
      if (unk_id_ && node.id == *unk_id_) {
        if (!pending_unk) unk_end = end;
        pending_unk = true;
      } else {
        if (pending_unk) pieces.emplace_back(end, unk_end), pending_unk = false;
        pieces.emplace_back(st, end);
      }
      end = st;
    }
    if (pending_unk) pieces.emplace_back(0, unk_end);
    for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
      const std::string piece = s.substr(it->first, it->second - it->first);
      auto t = token_to_id_.find(piece);
      if (t != token_to_id_.end()) {
        ids->push_back(t->second);
        continue;
      }
      if (byte_fallback_) {
        bool all = true;
        for (unsigned char b : piece) all = all && fallback_id_[b] >= 0;
        if (all) {
          for (unsigned char b : piece) ids->push_back(fallback_id_[b]);
          continue;
        }
      }
      if (!unk_id_) throw InvalidArgument("Unigram model has no unk_id for \"" + piece + "\"");
      ids->push_back(*unk_id_);
    }
  }

  std::vector<std::string> pieces_;
  std::vector<double> scores_;
  std::unordered_map<std::string, int32_t> token_to_id_;
  double min_score_ = std::numeric_limits<double>::max();
  std::optional<int32_t> unk_id_;
  bool byte_fallback_ = false;
  int32_t fallback_id_[256];
  // Byte trie of the pieces: node 0 is the root.
  std::vector<std::vector<std::pair<unsigned char, int32_t>>> children_{{}};
  std::vector<int32_t> terminal_{-1};
  int32_t root_[256];
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache_;
};

}  // namespace

std::unique_ptr<Model> MakeUnigramModel(const json& j, const std::string& source) {
  return std::make_unique<Unigram>(j, source);
}

}  // namespace stip::tokenizer_pipeline
