// The values of the Jinja interpreter (common/jinja/), with Python's
// semantics as Jinja2 gives them: undefined, none, booleans, integers,
// floats, strings, lists, dicts (insertion-ordered), callables and
// namespaces.
//
// Strings carry their provenance: the byte ranges that came from the
// caller's untrusted data (chat messages) rather than from the template.
// Every operation keeps the ranges where it can (concatenation, slicing,
// strip, split, join...) and marks its whole result untrusted where it
// cannot tell (upper(), format(), tojson of a message...), so that the
// renderer can tell which special-token spellings in its output the
// template wrote (see template.h, RenderedText).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace stip::jinja {

// A string with the byte ranges [begin, end) that are untrusted (sorted,
// disjoint, not adjacent).
struct Text {
  std::string s;
  std::vector<std::pair<size_t, size_t>> untrusted;

  Text() = default;
  explicit Text(std::string str, bool is_untrusted = false);

  void Append(const Text& other);
  void Append(std::string_view trusted);
  // Bytes [begin, end) with their provenance.
  Text Sub(size_t begin, size_t end) const;
  bool any_untrusted() const { return !untrusted.empty(); }
  // Marks every byte untrusted (for results whose provenance is lost).
  void TaintAll();
  void MarkUntrusted(size_t begin, size_t end);
};

class Value;
using ValueList = std::vector<Value>;

struct Dict {
  std::vector<std::pair<Value, Value>> items;
  const Value* Find(const Value& key) const;
  Value* Find(const Value& key);
  void Set(const Value& key, Value value);
};

struct CallArgs {
  ValueList positional;
  std::vector<std::pair<std::string, Value>> keyword;
  // The keyword argument `name` (removed), else the positional one at `index`
  // if present, else nullptr.
  const Value* Get(size_t index, std::string_view name) const;
};

class Evaluator;
using NativeFunction = std::function<Value(Evaluator&, const CallArgs&)>;

class Value {
 public:
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable };

  Value() = default;  // undefined
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double d);
  static Value String(std::string s, bool untrusted = false);
  static Value String(Text t);
  static Value List(ValueList items = {});
  // A tuple: a list that Python prints with parentheses.
  static Value Tuple(ValueList items);
  static Value MakeDict(Dict d = {});
  // A namespace(): a dict whose attributes `set ns.x = ...` may assign.
  static Value Namespace(Dict d = {});
  static Value Callable(std::string name, NativeFunction fn);
  // A JSON value; every string in it is untrusted when `untrusted`.
  // (ordered_json: objects keep their key order, as Python dicts do.)
  static Value FromJson(const nlohmann::ordered_json& j, bool untrusted);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kDict && is_namespace_; }
  bool is_tuple() const { return kind_ == Kind::kList && is_namespace_; }
  bool is_callable() const { return kind_ == Kind::kCallable; }

  bool b() const { return b_; }
  int64_t i() const { return i_; }
  double f() const { return f_; }
  // Numeric value of a bool, int or float.
  double AsDouble() const;
  const Text& text() const { return *text_; }
  const std::string& str() const { return text_->s; }
  const ValueList& list() const { return *list_; }
  const Dict& dict() const { return *dict_; }
  Dict& mutable_dict() const { return *dict_; }  // namespaces only
  const std::string& callable_name() const { return name_; }
  const NativeFunction& function() const { return *fn_; }

  bool Truthy() const;
  // Python's str(): "None", "True", "1.5", "['a', 1]"; undefined is "".
  Text ToText() const;
  std::string Repr() const;
  const char* TypeName() const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool b_ = false;
  bool is_namespace_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const Text> text_;
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<Dict> dict_;
  std::string name_;
  std::shared_ptr<const NativeFunction> fn_;
};

// Python's ==.
bool Equal(const Value& a, const Value& b);
// Python's repr() of a float ("1.0", "0.1", "1e+16").
std::string FloatRepr(double d);

// json.dumps as transformers' tojson filter calls it (ensure_ascii=False by
// default). indent < 0: none. The result is untrusted if any string in
// `v` is.
struct JsonOptions {
  bool ensure_ascii = false;
  int indent = -1;
  bool custom_separators = false;  // else json.dumps's defaults for the indent
  std::string item_separator;
  std::string key_separator;
  bool sort_keys = false;
};
Text ToJson(const Value& v, const JsonOptions& options);

// UTF-8 helpers on code points (invalid bytes count as one code point each).
std::vector<size_t> CodePointOffsets(std::string_view s);  // begins, plus s.size()
bool IsPythonSpace(uint32_t cp);
uint32_t DecodeAt(std::string_view s, size_t pos, size_t* length);

}  // namespace stip::jinja
