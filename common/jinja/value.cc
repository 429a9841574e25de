#include "common/jinja/value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace stip::jinja {

// ---- Text ---------------------------------------------------------------------

Text::Text(std::string str, bool is_untrusted) : s(std::move(str)) {
  if (is_untrusted && !s.empty()) untrusted.emplace_back(0, s.size());
}

void Text::MarkUntrusted(size_t begin, size_t end) {
  if (begin >= end) return;
  if (!untrusted.empty() && untrusted.back().second >= begin) {
    untrusted.back().second = std::max(untrusted.back().second, end);
    return;
  }
  untrusted.emplace_back(begin, end);
}

void Text::Append(const Text& other) {
  const size_t base = s.size();
  s += other.s;
  for (const auto& r : other.untrusted) MarkUntrusted(base + r.first, base + r.second);
}

void Text::Append(std::string_view trusted) { s.append(trusted.data(), trusted.size()); }

Text Text::Sub(size_t begin, size_t end) const {
  Text t;
  end = std::min(end, s.size());
  if (begin >= end) return t;
  t.s = s.substr(begin, end - begin);
  for (const auto& r : untrusted) {
    const size_t b = std::max(r.first, begin), e = std::min(r.second, end);
    if (b < e) t.MarkUntrusted(b - begin, e - begin);
  }
  return t;
}

void Text::TaintAll() {
  untrusted.clear();
  if (!s.empty()) untrusted.emplace_back(0, s.size());
}

// ---- UTF-8 -------------------------------------------------------------------

uint32_t DecodeAt(std::string_view s, size_t pos, size_t* length) {
  const auto c = static_cast<unsigned char>(s[pos]);
  auto cont = [&](size_t k) {
    return pos + k < s.size() && (static_cast<unsigned char>(s[pos + k]) & 0xC0) == 0x80;
  };
  if (c < 0x80) {
    *length = 1;
    return c;
  }
  size_t n = 0;
  uint32_t cp = 0;
  if ((c & 0xE0) == 0xC0 && c >= 0xC2) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0 && c <= 0xF4) {
    n = 4;
    cp = c & 0x07;
  } else {
    *length = 1;
    return 0xFFFD;
  }
  for (size_t k = 1; k < n; ++k) {
    if (!cont(k)) {
      *length = 1;
      return 0xFFFD;
    }
    cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3F);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF)) {
    *length = 1;  // overlong, surrogate or beyond U+10FFFF
    return 0xFFFD;
  }
  *length = n;
  return cp;
}

std::vector<size_t> CodePointOffsets(std::string_view s) {
  std::vector<size_t> offsets;
  offsets.reserve(s.size() + 1);
  size_t pos = 0;
  while (pos < s.size()) {
    offsets.push_back(pos);
    size_t len = 1;
    DecodeAt(s, pos, &len);
    pos += len;
  }
  offsets.push_back(s.size());
  return offsets;
}

bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// ---- Dict / CallArgs ---------------------------------------------------------

const Value* Dict::Find(const Value& key) const {
  for (const auto& [k, v] : items) {
    if (Equal(k, key)) return &v;
  }
  return nullptr;
}

Value* Dict::Find(const Value& key) {
  for (auto& [k, v] : items) {
    if (Equal(k, key)) return &v;
  }
  return nullptr;
}

void Dict::Set(const Value& key, Value value) {
  if (Value* v = Find(key)) {
    *v = std::move(value);
  } else {
    items.emplace_back(key, std::move(value));
  }
}

const Value* CallArgs::Get(size_t index, std::string_view name) const {
  for (const auto& [k, v] : keyword) {
    if (k == name) return &v;
  }
  return index < positional.size() ? &positional[index] : nullptr;
}

// ---- Value -------------------------------------------------------------------

Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}
Value Value::Float(double d) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.f_ = d;
  return v;
}
Value Value::String(std::string s, bool untrusted) { return String(Text(std::move(s), untrusted)); }
Value Value::String(Text t) {
  Value v;
  v.kind_ = Kind::kString;
  v.text_ = std::make_shared<const Text>(std::move(t));
  return v;
}
Value Value::List(ValueList items) {
  Value v;
  v.kind_ = Kind::kList;
  v.list_ = std::make_shared<const ValueList>(std::move(items));
  return v;
}
Value Value::Tuple(ValueList items) {
  Value v = List(std::move(items));
  v.is_namespace_ = true;  // (the flag marks tuples among lists)
  return v;
}
Value Value::MakeDict(Dict d) {
  Value v;
  v.kind_ = Kind::kDict;
  v.dict_ = std::make_shared<Dict>(std::move(d));
  return v;
}
Value Value::Namespace(Dict d) {
  Value v = MakeDict(std::move(d));
  v.is_namespace_ = true;
  return v;
}
Value Value::Callable(std::string name, NativeFunction fn) {
  Value v;
  v.kind_ = Kind::kCallable;
  v.name_ = std::move(name);
  v.fn_ = std::make_shared<const NativeFunction>(std::move(fn));
  return v;
}

Value Value::FromJson(const nlohmann::ordered_json& j, bool untrusted) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return None();
    case nlohmann::ordered_json::value_t::boolean:
      return Bool(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Int(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      const uint64_t u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Float(static_cast<double>(u));
      return Int(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float:
      return Float(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return String(j.get<std::string>(), untrusted);
    case nlohmann::ordered_json::value_t::array: {
      ValueList items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(FromJson(e, untrusted));
      return List(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      d.items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) {
        // Keys are data too (a message's field names are the caller's).
        d.items.emplace_back(String(it.key(), untrusted), FromJson(it.value(), untrusted));
      }
      return MakeDict(std::move(d));
    }
    default:
      return None();
  }
}

double Value::AsDouble() const {
  switch (kind_) {
    case Kind::kBool:
      return b_ ? 1 : 0;
    case Kind::kInt:
      return static_cast<double>(i_);
    case Kind::kFloat:
      return f_;
    default:
      return 0;
  }
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return b_;
    case Kind::kInt:
      return i_ != 0;
    case Kind::kFloat:
      return f_ != 0;
    case Kind::kString:
      return !text_->s.empty();
    case Kind::kList:
      return !list_->empty();
    case Kind::kDict:
      return is_namespace_ || !dict_->items.empty();
    case Kind::kCallable:
      return true;
  }
  return false;
}

const char* Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return is_namespace_ ? "Namespace" : "dict";
    case Kind::kCallable:
      return "function";
  }
  return "?";
}

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  // The shortest digits that round-trip, then Python's layout rules.
  char buf[64];
  int precision = 1;
  for (; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*e", precision - 1, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string e(buf);
  const size_t epos = e.find('e');
  const int exponent = std::atoi(e.c_str() + epos + 1);
  std::string mantissa = e.substr(0, epos);
  const bool negative = mantissa[0] == '-';
  if (negative) mantissa.erase(0, 1);
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits += c;
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out;
  if (exponent < -4 || exponent >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp;
  } else if (exponent < 0) {
    out = "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  } else {
    const size_t int_digits = static_cast<size_t>(exponent) + 1;
    if (digits.size() <= int_digits) {
      out = digits + std::string(int_digits - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, int_digits) + "." + digits.substr(int_digits);
    }
  }
  return negative ? "-" + out : out;
}

namespace {

std::string PyStringRepr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c == static_cast<unsigned char>(quote)) {
          out += '\\';
          out += static_cast<char>(c);
        } else if (c < 0x20 || c == 0x7F) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += quote;
  return out;
}

}  // namespace

std::string Value::Repr() const {
  switch (kind_) {
    case Kind::kString:
      return PyStringRepr(text_->s);
    case Kind::kUndefined:
      return "Undefined";
    default:
      return ToText().s;
  }
}

Text Value::ToText() const {
  switch (kind_) {
    case Kind::kUndefined:
      return Text();
    case Kind::kNone:
      return Text("None");
    case Kind::kBool:
      return Text(b_ ? "True" : "False");
    case Kind::kInt:
      return Text(std::to_string(i_));
    case Kind::kFloat:
      return Text(FloatRepr(f_));
    case Kind::kString:
      return *text_;
    case Kind::kList: {
      Text t(is_namespace_ ? "(" : "[");
      bool untrusted = false;
      for (size_t k = 0; k < list_->size(); ++k) {
        if (k) t.Append(", ");
        const Value& e = (*list_)[k];
        t.Append(e.Repr());
        untrusted =
            untrusted || (e.is_string() && e.text().any_untrusted()) || e.is_list() || e.is_dict();
      }
      if (is_namespace_ && list_->size() == 1) t.Append(",");
      t.Append(is_namespace_ ? ")" : "]");
      if (untrusted) t.TaintAll();
      return t;
    }
    case Kind::kDict: {
      if (is_namespace_) return Text("<Namespace>");
      Text t("{");
      for (size_t k = 0; k < dict_->items.size(); ++k) {
        if (k) t.Append(", ");
        t.Append(dict_->items[k].first.Repr() + ": " + dict_->items[k].second.Repr());
      }
      t.Append("}");
      if (!dict_->items.empty()) t.TaintAll();  // provenance of nested strings not tracked
      return t;
    }
    case Kind::kCallable:
      return Text("<function " + name_ + ">");
  }
  return Text();
}

bool Equal(const Value& a, const Value& b) {
  using K = Value::Kind;
  const bool an = a.is_number() || a.is_bool(), bn = b.is_number() || b.is_bool();
  if (an && bn) {
    if (a.kind() != K::kFloat && b.kind() != K::kFloat) {
      const int64_t x = a.is_bool() ? a.b() : a.i(), y = b.is_bool() ? b.b() : b.i();
      return x == y;
    }
    return a.AsDouble() == b.AsDouble();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone:
      return true;
    case K::kString:
      return a.str() == b.str();
    case K::kList: {
      if (a.list().size() != b.list().size()) return false;
      for (size_t k = 0; k < a.list().size(); ++k) {
        if (!Equal(a.list()[k], b.list()[k])) return false;
      }
      return true;
    }
    case K::kDict: {
      if (a.is_namespace() || b.is_namespace()) return &a.dict() == &b.dict();
      if (a.dict().items.size() != b.dict().items.size()) return false;
      for (const auto& [k, v] : a.dict().items) {
        const Value* other = b.dict().Find(k);
        if (!other || !Equal(v, *other)) return false;
      }
      return true;
    }
    case K::kCallable:
      return &a.function() == &b.function();
    default:
      return false;
  }
}

// ---- JSON ----------------------------------------------------------------------

namespace {

void JsonString(const std::string& s, bool ensure_ascii, std::string* out) {
  *out += '"';
  size_t pos = 0;
  while (pos < s.size()) {
    const auto c = static_cast<unsigned char>(s[pos]);
    switch (c) {
      case '"':
        *out += "\\\"";
        ++pos;
        continue;
      case '\\':
        *out += "\\\\";
        ++pos;
        continue;
      case '\n':
        *out += "\\n";
        ++pos;
        continue;
      case '\r':
        *out += "\\r";
        ++pos;
        continue;
      case '\t':
        *out += "\\t";
        ++pos;
        continue;
      case '\b':
        *out += "\\b";
        ++pos;
        continue;
      case '\f':
        *out += "\\f";
        ++pos;
        continue;
      default:
        break;
    }
    char buf[16];
    if (c < 0x20) {
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      *out += buf;
      ++pos;
      continue;
    }
    if (c < 0x80 || !ensure_ascii) {
      *out += static_cast<char>(c);
      ++pos;
      continue;
    }
    size_t len = 1;
    uint32_t cp = DecodeAt(s, pos, &len);
    pos += len;
    if (cp >= 0x10000) {
      cp -= 0x10000;
      std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
    } else {
      std::snprintf(buf, sizeof buf, "\\u%04x", cp);
    }
    *out += buf;
  }
  *out += '"';
}

void JsonValue(const Value& v, const JsonOptions& o, int depth, std::string* out, bool* untrusted) {
  if (depth > 256) throw InvalidArgument("tojson: value nested too deeply");
  const std::string item_sep = o.custom_separators ? o.item_separator : o.indent >= 0 ? "," : ", ";
  const std::string key_sep = o.custom_separators ? o.key_separator : ": ";
  auto newline = [&](int level) {
    if (o.indent < 0) return;
    *out += '\n';
    out->append(static_cast<size_t>(o.indent) * static_cast<size_t>(level), ' ');
  };
  switch (v.kind()) {
    case Value::Kind::kNone:
      *out += "null";
      return;
    case Value::Kind::kBool:
      *out += v.b() ? "true" : "false";
      return;
    case Value::Kind::kInt:
      *out += std::to_string(v.i());
      return;
    case Value::Kind::kFloat:
      if (std::isnan(v.f())) {
        *out += "NaN";
      } else if (std::isinf(v.f())) {
        *out += v.f() > 0 ? "Infinity" : "-Infinity";
      } else {
        *out += FloatRepr(v.f());
      }
      return;
    case Value::Kind::kString:
      if (v.text().any_untrusted()) *untrusted = true;
      JsonString(v.str(), o.ensure_ascii, out);
      return;
    case Value::Kind::kList: {
      if (v.list().empty()) {
        *out += "[]";
        return;
      }
      *out += '[';
      for (size_t k = 0; k < v.list().size(); ++k) {
        if (k) *out += item_sep;
        newline(depth + 1);
        JsonValue(v.list()[k], o, depth + 1, out, untrusted);
      }
      newline(depth);
      *out += ']';
      return;
    }
    case Value::Kind::kDict: {
      if (v.is_namespace()) throw InvalidArgument("tojson: a namespace is not JSON serializable");
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : v.dict().items) items.push_back(&kv);
      if (o.sort_keys) {
        std::stable_sort(items.begin(), items.end(), [](const auto* a, const auto* b) {
          return a->first.ToText().s < b->first.ToText().s;
        });
      }
      if (items.empty()) {
        *out += "{}";
        return;
      }
      *out += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) *out += item_sep;
        newline(depth + 1);
        const Value& key = items[k]->first;
        if (key.is_string()) {
          if (key.text().any_untrusted()) *untrusted = true;
          JsonString(key.str(), o.ensure_ascii, out);
        } else if (key.is_none()) {
          *out += "\"null\"";
        } else if (key.is_bool()) {
          *out += key.b() ? "\"true\"" : "\"false\"";
        } else if (key.is_number()) {
          std::string tmp;
          JsonValue(key, o, depth + 1, &tmp, untrusted);
          *out += "\"" + tmp + "\"";
        } else {
          throw InvalidArgument(std::string("tojson: keys must be str, int, float, bool or None, "
                                            "not ") +
                                key.TypeName());
        }
        *out += key_sep;
        JsonValue(items[k]->second, o, depth + 1, out, untrusted);
      }
      newline(depth);
      *out += '}';
      return;
    }
    default:
      throw InvalidArgument(std::string("tojson: Object of type ") + v.TypeName() +
                            " is not JSON serializable");
  }
}

}  // namespace

Text ToJson(const Value& v, const JsonOptions& options) {
  std::string out;
  bool untrusted = false;
  JsonValue(v, options, 0, &out, &untrusted);
  return Text(std::move(out), untrusted);
}

}  // namespace stip::jinja
