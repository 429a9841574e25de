// Post-processors of tokenizer.json (pipeline.h): TemplateProcessing,
// BertProcessing, RobertaProcessing, ByteLevel (ids unchanged), Sequence.
// They add the special tokens of add_special_tokens and set token type ids.
#include "common/error.h"
#include "common/tokenizer/pipeline.h"

namespace stip::tokenizer_pipeline {
namespace {

class Template final : public PostProcessor {
 public:
  struct Item {
    bool sequence;             // $A / $B, or a special token
    int which = 0;             // sequence: 0 = A, 1 = B
    std::vector<int64_t> ids;  // special token's ids
    int32_t type_id = 0;
  };
  Template(std::vector<Item> single, std::vector<Item> pair)
      : single_(std::move(single)), pair_(std::move(pair)) {}
  void Process(std::vector<Encoding>* encodings, bool add_special_tokens) const override {
    const auto& items = encodings->size() == 2 ? pair_ : single_;
    if (items.empty()) {
      throw InvalidArgument(std::string("the tokenizer's TemplateProcessing has no ") +
                            (encodings->size() == 2 ? "pair" : "single") + " template");
    }
    Encoding out;
    for (const Item& item : items) {
      if (item.sequence) {
        if (item.which >= static_cast<int>(encodings->size())) continue;
        const Encoding& e = (*encodings)[item.which];
        out.ids.insert(out.ids.end(), e.ids.begin(), e.ids.end());
        out.type_ids.insert(out.type_ids.end(), e.ids.size(), item.type_id);
      } else if (add_special_tokens) {
        out.ids.insert(out.ids.end(), item.ids.begin(), item.ids.end());
        out.type_ids.insert(out.type_ids.end(), item.ids.size(), item.type_id);
      }
    }
    encodings->assign(1, std::move(out));
  }

 private:
  std::vector<Item> single_, pair_;
};

// BertProcessing / RobertaProcessing.
class ClsSep final : public PostProcessor {
 public:
  ClsSep(int64_t cls, int64_t sep, bool roberta) : cls_(cls), sep_(sep), roberta_(roberta) {}
  void Process(std::vector<Encoding>* encodings, bool add_special_tokens) const override {
    if (roberta_) {  // (RoBERTa has no token types: all 0, as in Hugging Face.)
      for (Encoding& e : *encodings) e.type_ids.assign(e.ids.size(), 0);
    }
    if (!add_special_tokens) return;
    Encoding out;
    const Encoding& a = (*encodings)[0];
    out.ids.push_back(cls_);
    out.ids.insert(out.ids.end(), a.ids.begin(), a.ids.end());
    out.ids.push_back(sep_);
    out.type_ids.assign(out.ids.size(), 0);
    if (encodings->size() == 2) {
      const Encoding& b = (*encodings)[1];
      if (roberta_) out.ids.push_back(sep_), out.type_ids.push_back(0);
      out.ids.insert(out.ids.end(), b.ids.begin(), b.ids.end());
      out.ids.push_back(sep_);
      out.type_ids.resize(out.ids.size(), roberta_ ? 0 : 1);
    }
    encodings->assign(1, std::move(out));
  }

 private:
  int64_t cls_, sep_;
  bool roberta_;
};

// ByteLevel: offsets only, so the ids pass unchanged.
class PassThrough final : public PostProcessor {
 public:
  void Process(std::vector<Encoding>*, bool) const override {}
};

class Sequence final : public PostProcessor {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PostProcessor>> parts) : parts_(std::move(parts)) {}
  void Process(std::vector<Encoding>* encodings, bool add_special_tokens) const override {
    for (const auto& p : parts_) p->Process(encodings, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

int64_t TokenId(const json& pair, const std::string& where, const char* key) {
  // ["[CLS]", 101]
  if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() ||
      !pair[1].is_number_integer() || pair[1].get<int64_t>() < 0) {
    throw InvalidArgument(where + ": \"" + key + "\" must be [token, id], got " + pair.dump());
  }
  return pair[1].get<int64_t>();
}

std::vector<Template::Item> ReadTemplate(const json& t, const json& specials,
                                         const std::string& where) {
  std::vector<Template::Item> items;
  if (t.is_null()) return items;  // (no pair template: pairs are refused)
  if (t.is_string()) {
    // "[CLS]:0 $A:0 [SEP]:0" (the string form).
    std::string s = t.get<std::string>();
    size_t pos = 0;
    while (pos < s.size()) {
      const size_t end = std::min(s.find(' ', pos), s.size());
      std::string word = s.substr(pos, end - pos);
      pos = end + 1;
      if (word.empty()) continue;
      int32_t type = 0;
      const size_t colon = word.rfind(':');
      if (colon != std::string::npos && colon + 1 < word.size() &&
          word.find_first_not_of("0123456789", colon + 1) == std::string::npos) {
        type = std::stoi(word.substr(colon + 1));
        word.resize(colon);
      }
      json j;
      if (word == "$A" || word == "$B" || word == "$") {
        j = {{"Sequence", {{"id", word == "$B" ? "B" : "A"}, {"type_id", type}}}};
      } else {
        j = {{"SpecialToken", {{"id", word}, {"type_id", type}}}};
      }
      items.push_back(ReadTemplate(json::array({j}), specials, where)[0]);
    }
    return items;
  }
  if (!t.is_array()) throw InvalidArgument(where + ": a template must be a list");
  for (const json& piece : t) {
    Template::Item item;
    if (piece.contains("Sequence") && piece["Sequence"].is_object()) {
      const json& s = piece["Sequence"];
      item.sequence = true;
      const std::string id = s.value("id", std::string("A"));
      if (id != "A" && id != "B") throw InvalidArgument(where + ": unknown sequence " + id);
      item.which = id == "B" ? 1 : 0;
      item.type_id = s.value("type_id", 0);
    } else if (piece.contains("SpecialToken") && piece["SpecialToken"].is_object()) {
      const json& s = piece["SpecialToken"];
      item.sequence = false;
      const std::string name = s.value("id", std::string());
      item.type_id = s.value("type_id", 0);
      if (!specials.is_object() || !specials.contains(name) || !specials[name].contains("ids") ||
          !specials[name]["ids"].is_array()) {
        throw InvalidArgument(where + ": special token \"" + name +
                              "\" is missing from special_tokens");
      }
      for (const json& id : specials[name]["ids"]) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0) {
          throw InvalidArgument(where + ": bad id of special token \"" + name + "\"");
        }
        item.ids.push_back(id.get<int64_t>());
      }
    } else {
      throw InvalidArgument(where + ": malformed template piece " + piece.dump());
    }
    items.push_back(std::move(item));
  }
  return items;
}

}  // namespace

void DefaultProcess(std::vector<Encoding>* encodings) {
  if (encodings->size() == 2) {
    Encoding& a = (*encodings)[0];
    Encoding& b = (*encodings)[1];
    a.ids.insert(a.ids.end(), b.ids.begin(), b.ids.end());
    a.type_ids.insert(a.type_ids.end(), b.type_ids.begin(), b.type_ids.end());
    encodings->resize(1);
  }
}

std::unique_ptr<PostProcessor> MakeBertProcessing(int64_t cls, int64_t sep) {
  return std::make_unique<ClsSep>(cls, sep, false);
}

std::unique_ptr<PostProcessor> MakePostProcessor(const json& j, const std::string& source) {
  if (j.is_null()) return nullptr;
  const std::string type = TypeOf(j);
  const std::string where = source + ": post_processor " + type;
  if (!j.is_object()) throw InvalidArgument(where + ": expected an object");
  if (type == "ByteLevel") return std::make_unique<PassThrough>();
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    return std::make_unique<ClsSep>(TokenId(j.value("cls", json()), where, "cls"),
                                    TokenId(j.value("sep", json()), where, "sep"),
                                    type == "RobertaProcessing");
  }
  if (type == "TemplateProcessing") {
    const json specials = j.value("special_tokens", json::object());
    return std::make_unique<Template>(ReadTemplate(j.value("single", json()), specials, where),
                                      ReadTemplate(j.value("pair", json()), specials, where));
  }
  if (type == "Sequence") {
    if (!j.contains("processors") || !j["processors"].is_array()) {
      throw InvalidArgument(where + " needs a \"processors\" array");
    }
    std::vector<std::unique_ptr<PostProcessor>> parts;
    for (const json& p : j["processors"]) {
      auto part = MakePostProcessor(p, source);
      if (part) parts.push_back(std::move(part));
    }
    return std::make_unique<Sequence>(std::move(parts));
  }
  throw Unimplemented(where + " is not supported");
}

}  // namespace stip::tokenizer_pipeline
