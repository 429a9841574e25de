// The BPE model of tokenizer.json (pipeline.h), as Hugging Face's
// models::bpe: the word's characters (with continuing_subword_prefix and
// end_of_word_suffix), unknown ones through byte_fallback or unk_token
// (fuse_unk), then merges lowest rank first, leftmost on ties. Byte-level
// pieces (Piece::byte_level) start from the bytes' symbols directly.
#include <algorithm>
#include <functional>
#include <mutex>

#include "common/error.h"
#include "common/tokenizer/pipeline.h"
#include "common/tokenizer/unicode.h"

namespace stip::tokenizer_pipeline {
namespace {

constexpr int64_t kMaxTokenId = int64_t{1} << 24;
constexpr size_t kCacheCapacity = 10000;       // words (Hugging Face's BPE cache size)
constexpr size_t kMaxCachedWord = 256;         // bytes
constexpr char kMetaspace[] = "\xE2\x96\x81";  // U+2581

// An open-addressing hash map from 64-bit keys (never ~0) to values: the
// merge table and the character table are looked up several times per input
// byte, and std::unordered_map's node chasing dominated the profile.
template <typename V>
class FlatMap {
 public:
  void Reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    values_.assign(cap, V{});
    mask_ = cap - 1;
  }
  // Inserts or overwrites.
  void Put(uint64_t key, const V& value) {
    size_t i = Slot(key);
    while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & mask_;
    keys_[i] = key;
    values_[i] = value;
  }
  const V* Find(uint64_t key) const {
    if (keys_.empty()) return nullptr;
    for (size_t i = Slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  size_t Slot(uint64_t x) const {  // (MurmurHash3's finalizer: all bits mix)
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return static_cast<size_t>(x) & mask_;
  }
  std::vector<uint64_t> keys_;
  std::vector<V> values_;
  size_t mask_ = 0;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

class Bpe final : public Model {
 public:
  Bpe(const json& j, const std::string& source) {
    const std::string where = source + ": model (BPE)";
    if (!j.contains("vocab") || !j["vocab"].is_object()) {
      throw InvalidArgument(where + ": \"vocab\" must be an object");
    }
    const json& vocab = j["vocab"];
    token_to_id_.reserve(vocab.size());
    for (const auto& [token, value] : vocab.items()) {
      if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
          value.get<int64_t>() >= kMaxTokenId) {
        throw InvalidArgument(where + ": the id of token \"" + token +
                              "\" is not an integer in [0, " + std::to_string(kMaxTokenId) + ")");
      }
      const auto id = value.get<int32_t>();
      token_to_id_[token] = id;
      if (static_cast<size_t>(id) >= id_to_token_.size()) id_to_token_.resize(id + 1);
      id_to_token_[id] = token;
    }
    auto str = [&](const char* key) -> std::string {
      auto it = j.find(key);
      if (it == j.end() || it->is_null()) return "";
      if (!it->is_string()) throw InvalidArgument(where + ": \"" + key + "\" must be a string");
      return it->get<std::string>();
    };
    prefix_ = str("continuing_subword_prefix");
    suffix_ = str("end_of_word_suffix");
    unk_token_ = str("unk_token");
    has_unk_ = !unk_token_.empty();
    fuse_unk_ = j.value("fuse_unk", false);
    byte_fallback_ = j.value("byte_fallback", false);
    ignore_merges_ = j.value("ignore_merges", false);
    if (j.contains("dropout") && !j["dropout"].is_null() && j["dropout"].get<double>() != 0.0) {
      throw Unimplemented(where + ": dropout is not supported (encoding must be deterministic)");
    }

    const json merges = j.value("merges", json::array());
    if (!merges.is_array()) throw InvalidArgument(where + ": \"merges\" must be an array");
    merges_.Reserve(merges.size());
    // Single characters (for the common case without prefix and suffix).
    size_t singles = 0;
    for (const auto& [token, id] : token_to_id_) {
      if (!token.empty() &&
          unicode::CharLength(static_cast<unsigned char>(token[0])) == token.size()) {
        ++singles;
      }
    }
    char_id_.Reserve(singles);
    for (const auto& [token, id] : token_to_id_) {
      if (!token.empty() &&
          unicode::CharLength(static_cast<unsigned char>(token[0])) == token.size()) {
        size_t i = 0;
        char_id_.Put(unicode::Next(token, &i), id);
      }
    }
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const json& m = merges[rank];
      const std::string at = where + ": merges[" + std::to_string(rank) + "]";
      std::string a, b;
      if (m.is_string()) {
        const std::string line = m.get<std::string>();
        const size_t space = line.find(' ');
        if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
          throw InvalidArgument(at + ": a merge must be two tokens separated by one space, got \"" +
                                line + "\"");
        }
        a = line.substr(0, space);
        b = line.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        throw InvalidArgument(at + ": a merge must be \"a b\" or [\"a\", \"b\"], got " + m.dump());
      }
      auto ia = token_to_id_.find(a), ib = token_to_id_.find(b);
      if (ia == token_to_id_.end() || ib == token_to_id_.end()) {
        throw InvalidArgument(at + ": token \"" + (ia == token_to_id_.end() ? a : b) +
                              "\" is not in the vocabulary");
      }
      if (b.size() < prefix_.size()) {
        throw InvalidArgument(at + ": \"" + b + "\" is shorter than continuing_subword_prefix");
      }
      const std::string merged = a + b.substr(prefix_.size());
      auto iab = token_to_id_.find(merged);
      if (iab == token_to_id_.end()) {
        throw InvalidArgument(at + ": merged token \"" + merged + "\" is not in the vocabulary");
      }
      merges_.Put(PairKey(ia->second, ib->second), {static_cast<int32_t>(rank), iab->second});
    }

    // Long words (SentencePiece-style BPE has no pre-tokenizer: a paragraph
    // is one word) split before each ▁ run when no token could cross it.
    split_at_metaspace_ = prefix_.empty() && suffix_.empty() && token_to_id_.count(kMetaspace);
    for (const auto& [token, id] : token_to_id_) {
      if (!split_at_metaspace_) break;
      for (size_t at = token.find(kMetaspace, 1); at != std::string::npos;
           at = token.find(kMetaspace, at + 1)) {
        if (at < 3 || token.compare(at - 3, 3, kMetaspace) != 0) {
          split_at_metaspace_ = false;
          break;
        }
      }
    }

    static const char kHex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
      auto it = token_to_id_.find(ByteLevelChar(static_cast<unsigned char>(b)));
      byte_level_id_[b] = it == token_to_id_.end() ? -1 : it->second;
      if (byte_level_id_[b] < 0) all_bytes_known_ = false;
      const std::string fb = std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
      auto f = token_to_id_.find(fb);
      fallback_id_[b] = f == token_to_id_.end() ? -1 : f->second;
    }
  }

  void Tokenize(const Piece& piece, std::vector<int64_t>* ids) const override {
    if (piece.text.empty()) return;
    bool bytes = piece.byte_level;
    if (bytes && (!prefix_.empty() || !suffix_.empty() || !all_bytes_known_)) {
      Piece p = piece;
      Materialize(&p);
      TokenizeWord(p.text, false, ids);
      return;
    }
    TokenizeWord(piece.text, bytes, ids);
  }

  std::optional<int64_t> TokenToId(const std::string& token) const override {
    auto it = token_to_id_.find(token);
    if (it == token_to_id_.end()) return std::nullopt;
    return it->second;
  }
  const std::string* IdToToken(int64_t id) const override {
    if (id < 0 || id >= static_cast<int64_t>(id_to_token_.size())) return nullptr;
    const std::string& t = id_to_token_[id];
    if (t.empty() && !token_to_id_.count(t)) return nullptr;
    return &t;
  }
  int64_t size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  std::string kind() const override { return "bpe"; }

 private:
  struct MergeValue {
    int32_t rank;
    int32_t new_id;
  };
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };

  int32_t UnkId() const {
    auto it = token_to_id_.find(unk_token_);
    if (it == token_to_id_.end()) {
      throw InvalidArgument("BPE unk_token \"" + unk_token_ + "\" is not in the vocabulary");
    }
    return it->second;
  }

  // `bytes`: `word` is raw bytes standing for byte-level characters.
  // `whole`: `word` is the whole piece (ignore_merges looks it up).
  void TokenizeWord(const std::string& word, bool bytes, std::vector<int64_t>* ids,
                    bool whole = true) const {
    if (whole && split_at_metaspace_ && !bytes && word.size() > kMaxCachedWord / 4) {
      if (ignore_merges_) {
        auto it = token_to_id_.find(word);
        if (it != token_to_id_.end()) {
          ids->push_back(it->second);
          return;
        }
      }
      // No token has "x▁" (x not ▁), so no merge crosses the start
      // of a ▁ run: the parts merge alone, the same as the whole (and
      // are short enough for the cache).
      size_t start = 0;
      for (size_t i = 1; i + 3 <= word.size(); ++i) {
        if (word.compare(i, 3, kMetaspace) != 0) continue;
        if (i >= 3 && word.compare(i - 3, 3, kMetaspace) == 0) continue;  // inside a run
        TokenizeWord(word.substr(start, i - start), false, ids, false);
        start = i;
      }
      TokenizeWord(word.substr(start), false, ids, false);
      return;
    }
    const bool cacheable = word.size() <= kMaxCachedWord;
    std::string key;
    if (cacheable) {
      // (A byte-level key starts with 0xFF, which no UTF-8 text does.)
      if (bytes) key.push_back('\xff');
      key += word;
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(key);
      if (it != cache_.end()) {
        ids->insert(ids->end(), it->second.begin(), it->second.end());
        return;
      }
    }
    // (The cache never holds a word of the vocabulary under ignore_merges, so
    // looking there first is the same as Hugging Face's order.)
    if (ignore_merges_ && whole) {
      std::string token;
      if (bytes) {
        for (unsigned char b : word) token += ByteLevelChar(b);
      }
      auto it = token_to_id_.find(bytes ? token : word);
      if (it != token_to_id_.end()) {
        ids->push_back(it->second);
        return;
      }
    }
    std::vector<int32_t> merged;
    MergeWord(word, bytes, &merged);
    ids->insert(ids->end(), merged.begin(), merged.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (cache_.size() < kCacheCapacity) cache_.emplace(std::move(key), std::move(merged));
    }
  }

  void MergeWord(const std::string& w, bool bytes, std::vector<int32_t>* out) const {
    std::vector<Symbol> syms;
    syms.reserve(w.size());
    auto add = [&](int32_t id) {
      const auto n = static_cast<int32_t>(syms.size());
      syms.push_back({id, n - 1, n + 1, true});
    };
    if (bytes) {
      for (unsigned char b : w) add(byte_level_id_[b]);  // (all known: see Tokenize)
    } else {
      // Characters, with the prefix on all but the first and the suffix on
      // the last; unknown ones through byte_fallback, else unk (fused).
      int32_t unk = -1;  // a pending unk (fused with the next ones)
      std::string s;
      size_t i = 0;
      const bool plain = prefix_.empty() && suffix_.empty();
      while (i < w.size()) {
        const size_t start = i;
        int32_t id = -1;
        if (plain) {
          const uint32_t cp = unicode::Next(w, &i);
          if (const int32_t* found = char_id_.Find(cp)) id = *found;
        } else {
          i += unicode::CharLength(static_cast<unsigned char>(w[i]));
        }
        s.clear();
        if (start > 0) s += prefix_;
        s.append(w, start, i - start);
        if (i >= w.size()) s += suffix_;
        if (!plain) {
          auto it = token_to_id_.find(s);
          if (it != token_to_id_.end()) id = it->second;
        }
        if (id >= 0) {
          if (unk >= 0) add(unk), unk = -1;
          add(id);
          continue;
        }
        if (byte_fallback_) {
          bool all = true;
          for (unsigned char b : s) all = all && fallback_id_[b] >= 0;
          if (all) {
            for (unsigned char b : s) add(fallback_id_[b]);
            continue;
          }
        }
        if (has_unk_) {
          if (unk >= 0 && fuse_unk_) continue;
          if (unk >= 0) add(unk);
          unk = UnkId();
        }
      }
      if (unk >= 0) add(unk);
    }
    if (syms.empty()) return;
    syms.back().next = -1;

    struct Candidate {
      int32_t rank, pos, new_id;
      bool operator>(const Candidate& o) const {
        return rank != o.rank ? rank > o.rank : pos > o.pos;
      }
    };
    std::vector<Candidate> heap;
    auto push = [&](int32_t pos) {
      const Symbol& s = syms[pos];
      if (s.next < 0) return;
      const MergeValue* m = merges_.Find(PairKey(s.id, syms[s.next].id));
      if (!m) return;
      heap.push_back({m->rank, pos, m->new_id});
      std::push_heap(heap.begin(), heap.end(), std::greater<Candidate>());
    };
    for (int32_t i = 0; i + 1 < static_cast<int32_t>(syms.size()); ++i) push(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<Candidate>());
      const Candidate c = heap.back();
      heap.pop_back();
      Symbol& s = syms[c.pos];
      if (!s.alive || s.next < 0) continue;
      const MergeValue* m = merges_.Find(PairKey(s.id, syms[s.next].id));
      if (!m || m->new_id != c.new_id) continue;
      Symbol& right = syms[s.next];
      s.id = c.new_id;
      right.alive = false;
      s.next = right.next;
      if (s.next >= 0) syms[s.next].prev = c.pos;
      if (s.prev >= 0) push(s.prev);
      push(c.pos);
    }
    for (int32_t i = 0; i >= 0; i = syms[i].next) out->push_back(syms[i].id);
  }

  std::unordered_map<std::string, int32_t> token_to_id_;
  std::vector<std::string> id_to_token_;
  FlatMap<MergeValue> merges_;
  FlatMap<int32_t> char_id_;  // the id of each one-character token
  std::string prefix_, suffix_, unk_token_;
  bool has_unk_ = false, fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  bool all_bytes_known_ = true;  // every byte has a byte-level symbol
  bool split_at_metaspace_ = false;
  int32_t byte_level_id_[256];
  int32_t fallback_id_[256];
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace

std::unique_ptr<Model> MakeBpeModel(const json& j, const std::string& source) {
  return std::make_unique<Bpe>(j, source);
}

}  // namespace stip::tokenizer_pipeline
