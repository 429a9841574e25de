// Built-in filters, tests, globals and methods of the Jinja interpreter, with
// the semantics of Jinja2 3.1 and Python 3 (and transformers' tojson,
// raise_exception and strftime_now).
#include <locale.h>

#include <algorithm>
#include <cerrno>
#include <clocale>
#include <cmath>
#include <ctime>
#include <cwctype>

#include "common/error.h"
#include "common/jinja/evaluator.h"

namespace stip::jinja {

namespace {

// ---- helpers -------------------------------------------------------------------

Value Arg(const CallArgs& args, size_t index, const char* name, const Value& fallback) {
  const Value* v = args.Get(index, name);
  return v ? *v : fallback;
}

const Value kUndefined;
const Value kNone = Value::None();
const Value kFalse = Value::Bool(false);

const Text* RequireString(const Value& v, const std::string& what) {
  if (!v.is_string()) Throw(what + " needs a string, not " + v.TypeName());
  return &v.text();
}

int64_t ToIndex(const Value& v, const std::string& what) {
  if (v.is_int()) return v.i();
  if (v.is_bool()) return v.b() ? 1 : 0;
  Throw(what + ": indices must be integers, not " + std::string(v.TypeName()));
}

// Python's case mapping through the C.UTF-8 locale (ASCII if it is missing).
locale_t Utf8Locale() {
  static locale_t loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(nullptr));
  return loc;
}

void AppendCodePoint(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    *out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    *out += static_cast<char>(0xC0 | (cp >> 6));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out += static_cast<char>(0xE0 | (cp >> 12));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    *out += static_cast<char>(0xF0 | (cp >> 18));
    *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    *out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

uint32_t MapCase(uint32_t cp, bool upper) {
  if (cp < 0x80) {
    if (upper && cp >= 'a' && cp <= 'z') return cp - 32;
    if (!upper && cp >= 'A' && cp <= 'Z') return cp + 32;
    return cp;
  }
  locale_t loc = Utf8Locale();
  if (!loc) return cp;
  return static_cast<uint32_t>(upper ? towupper_l(static_cast<wint_t>(cp), loc)
                                     : towlower_l(static_cast<wint_t>(cp), loc));
}

bool IsCased(uint32_t cp) { return MapCase(cp, true) != cp || MapCase(cp, false) != cp; }

// mode: 'u' upper, 'l' lower, 't' Python title, 'c' capitalize, 'j' Jinja title.
Text ChangeCase(const Text& in, char mode) {
  std::string out;
  out.reserve(in.s.size());
  bool prev_cased = false;
  bool first = true;
  bool word_start = true;  // Jinja's title: after - whitespace ( { [ <
  size_t pos = 0;
  while (pos < in.s.size()) {
    size_t len = 1;
    const uint32_t cp = DecodeAt(in.s, pos, &len);
    if (cp == 0xFFFD && len == 1 && static_cast<unsigned char>(in.s[pos]) != 0xEF) {
      out += in.s[pos];
      pos += len;
      continue;
    }
    uint32_t m = cp;
    switch (mode) {
      case 'u':
        m = MapCase(cp, true);
        break;
      case 'l':
        m = MapCase(cp, false);
        break;
      case 't':
        m = MapCase(cp, !prev_cased);
        prev_cased = IsCased(cp);
        break;
      case 'c':
        m = MapCase(cp, first);
        break;
      case 'j': {
        const bool sep =
            cp == '-' || IsPythonSpace(cp) || cp == '(' || cp == '{' || cp == '[' || cp == '<';
        m = sep ? cp : MapCase(cp, word_start);
        word_start = sep;
        break;
      }
    }
    first = false;
    AppendCodePoint(m, &out);
    pos += len;
  }
  Text t(std::move(out));
  if (in.any_untrusted()) t.TaintAll();
  return t;
}

// Python's str.strip family: `chars` null = whitespace.
Text Strip(const Text& in, const Value* chars, bool left, bool right) {
  std::vector<uint32_t> set;
  const bool whitespace = !chars || chars->is_none() || chars->is_undefined();
  if (!whitespace) {
    const std::string& c = RequireString(*chars, "strip")->s;
    size_t p = 0;
    while (p < c.size()) {
      size_t len = 1;
      set.push_back(DecodeAt(c, p, &len));
      p += len;
    }
  }
  auto strip_it = [&](uint32_t cp) {
    return whitespace ? IsPythonSpace(cp) : std::find(set.begin(), set.end(), cp) != set.end();
  };
  const std::vector<size_t> offs = CodePointOffsets(in.s);
  size_t b = 0, e = offs.size() - 1;
  size_t len = 1;
  if (left) {
    while (b < e && strip_it(DecodeAt(in.s, offs[b], &len))) ++b;
  }
  if (right) {
    while (e > b && strip_it(DecodeAt(in.s, offs[e - 1], &len))) --e;
  }
  return in.Sub(offs[b], offs[e]);
}

ValueList Split(const Text& in, const Value* sep, int64_t maxsplit) {
  ValueList parts;
  const std::string& s = in.s;
  if (!sep || sep->is_none() || sep->is_undefined()) {
    const std::vector<size_t> offs = CodePointOffsets(s);
    size_t k = 0, len = 1;
    const size_t n = offs.size() - 1;
    while (true) {
      while (k < n && IsPythonSpace(DecodeAt(s, offs[k], &len))) ++k;
      if (k >= n) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) {
        size_t e = n;
        while (e > k && IsPythonSpace(DecodeAt(s, offs[e - 1], &len))) --e;
        parts.push_back(Value::String(in.Sub(offs[k], offs[e])));
        break;
      }
      size_t j = k;
      while (j < n && !IsPythonSpace(DecodeAt(s, offs[j], &len))) ++j;
      parts.push_back(Value::String(in.Sub(offs[k], offs[j])));
      k = j;
    }
    return parts;
  }
  const std::string& d = RequireString(*sep, "split")->s;
  if (d.empty()) Throw("split: empty separator");
  size_t start = 0;
  while (true) {
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) break;
    const size_t f = s.find(d, start);
    if (f == std::string::npos) break;
    parts.push_back(Value::String(in.Sub(start, f)));
    start = f + d.size();
  }
  parts.push_back(Value::String(in.Sub(start, s.size())));
  return parts;
}

Text Replace(Evaluator& ev, const Text& in, const Text& old, const Text& with, int64_t count) {
  Text out;
  size_t start = 0;
  int64_t done = 0;
  if (old.s.empty()) {
    // Python inserts `with` between code points (and at both ends).
    const std::vector<size_t> offs = CodePointOffsets(in.s);
    for (size_t k = 0; k + 1 < offs.size() + 1; ++k) {
      if (count >= 0 && done >= count) {
        out.Append(in.Sub(offs[std::min(k, offs.size() - 1)], in.s.size()));
        return out;
      }
      out.Append(with);
      ++done;
      if (k + 1 < offs.size()) out.Append(in.Sub(offs[k], offs[k + 1]));
      ev.CheckSize(out.s.size());
    }
    return out;
  }
  while (count < 0 || done < count) {
    const size_t f = in.s.find(old.s, start);
    if (f == std::string::npos) break;
    out.Append(in.Sub(start, f));
    out.Append(with);
    ev.CheckSize(out.s.size());
    start = f + old.s.size();
    ++done;
  }
  out.Append(in.Sub(start, in.s.size()));
  return out;
}

// str.format: {} {0} {name}, {{ and }}; format specs are not supported.
Text Format(const Text& fmt, const CallArgs& args) {
  Text out;
  size_t next = 0, last = 0;
  const std::string& s = fmt.s;
  for (size_t p = 0; p < s.size(); ++p) {
    if (s[p] == '{' && p + 1 < s.size() && s[p + 1] == '{') {
      out.Append(fmt.Sub(last, p + 1));
      last = ++p + 1;
      continue;
    }
    if (s[p] == '}' && p + 1 < s.size() && s[p + 1] == '}') {
      out.Append(fmt.Sub(last, p + 1));
      last = ++p + 1;
      continue;
    }
    if (s[p] != '{') continue;
    const size_t close = s.find('}', p);
    if (close == std::string::npos) Throw("format: single '{' in the format string");
    out.Append(fmt.Sub(last, p));
    std::string field = s.substr(p + 1, close - p - 1);
    if (field.find(':') != std::string::npos || field.find('!') != std::string::npos) {
      Throw("format: format specs and conversions are not supported");
    }
    const Value* v = nullptr;
    if (field.empty()) {
      if (next >= args.positional.size()) Throw("format: not enough arguments");
      v = &args.positional[next++];
    } else if (std::all_of(field.begin(), field.end(),
                           [](char c) { return c >= '0' && c <= '9'; })) {
      const size_t idx = std::stoul(field);
      if (idx >= args.positional.size()) Throw("format: argument index out of range");
      v = &args.positional[idx];
    } else {
      for (const auto& [k, kv] : args.keyword) {
        if (k == field) v = &kv;
      }
      if (!v) Throw("format: no argument '" + field + "'");
    }
    out.Append(v->ToText());
    last = close + 1;
    p = close;
  }
  out.Append(fmt.Sub(last, s.size()));
  return out;
}

Value Slice(const Value& obj, const CallArgs& args) {
  const Value& a = args.positional[0];
  const Value& b = args.positional[1];
  const Value& c = args.positional[2];
  int64_t step = c.is_undefined() || c.is_none() ? 1 : ToIndex(c, "slice step");
  if (step == 0) Throw("slice step cannot be zero");
  std::vector<size_t> offs;
  int64_t n = 0;
  if (obj.is_string()) {
    offs = CodePointOffsets(obj.str());
    n = static_cast<int64_t>(offs.size()) - 1;
  } else if (obj.is_list()) {
    n = static_cast<int64_t>(obj.list().size());
  } else if (obj.is_undefined()) {
    Throw("slicing an undefined value");
  } else {
    Throw(std::string("'") + obj.TypeName() + "' object is not subscriptable");
  }
  auto bound = [&](const Value& v, int64_t dflt) -> int64_t {
    if (v.is_undefined() || v.is_none()) return dflt;
    int64_t x = ToIndex(v, "slice");
    if (x < 0) x += n;
    if (step > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  const int64_t start = bound(a, step > 0 ? 0 : n - 1);
  const int64_t stop = bound(b, step > 0 ? n : -1);
  if (obj.is_string() && step == 1) {
    if (start >= stop) return Value::String("");
    return Value::String(
        obj.text().Sub(offs[static_cast<size_t>(start)], offs[static_cast<size_t>(stop)]));
  }
  ValueList items;
  Text t;
  for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
    if (obj.is_string()) {
      t.Append(obj.text().Sub(offs[static_cast<size_t>(k)], offs[static_cast<size_t>(k + 1)]));
    } else {
      items.push_back(obj.list()[static_cast<size_t>(k)]);
    }
  }
  if (obj.is_string()) return Value::String(std::move(t));
  return Value::List(std::move(items));
}

int64_t Length(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kString:
      return static_cast<int64_t>(CodePointOffsets(v.str()).size()) - 1;
    case Value::Kind::kList:
      return static_cast<int64_t>(v.list().size());
    case Value::Kind::kDict:
      return static_cast<int64_t>(v.dict().items.size());
    case Value::Kind::kUndefined:
      return 0;
    default:
      Throw(std::string("object of type '") + v.TypeName() + "' has no len()");
  }
}

// Jinja's attribute lookup for filters like map(attribute='a.b') and sort(attribute=...).
Value AttributePath(Evaluator& ev, const Value& v, const Value& attribute) {
  if (attribute.is_int()) return ev.GetItem(v, attribute);
  const std::string& path = RequireString(attribute, "attribute")->s;
  Value cur = v;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part =
        path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    cur = digits ? ev.GetItem(cur, Value::Int(std::stoll(part)))
                 : ev.GetItem(cur, Value::String(part));
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

int CompareForSort(const Value& a, const Value& b, bool case_sensitive) {
  if (a.is_string() && b.is_string() && !case_sensitive) {
    const std::string x = ChangeCase(a.text(), 'l').s, y = ChangeCase(b.text(), 'l').s;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if ((a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool())) {
    return a.AsDouble() < b.AsDouble() ? -1 : a.AsDouble() > b.AsDouble() ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) return a.str().compare(b.str());
  Throw(std::string("cannot compare '") + a.TypeName() + "' and '" + b.TypeName() + "' to sort");
}

// ---- methods of str, dict and list ---------------------------------------------

Value StringMethod(Evaluator& ev, const Value& self, const std::string& name,
                   const CallArgs& args) {
  const Text& t = self.text();
  const std::string& s = t.s;
  if (name == "strip") return Value::String(Strip(t, args.Get(0, "chars"), true, true));
  if (name == "lstrip") return Value::String(Strip(t, args.Get(0, "chars"), true, false));
  if (name == "rstrip") return Value::String(Strip(t, args.Get(0, "chars"), false, true));
  if (name == "split" || name == "rsplit") {
    const Value& m = Arg(args, 1, "maxsplit", Value::Int(-1));
    const int64_t maxsplit = ToIndex(m, name);
    if (name == "rsplit" && maxsplit >= 0) Throw("rsplit with maxsplit is not supported");
    return Value::List(Split(t, args.Get(0, "sep"), maxsplit));
  }
  if (name == "splitlines") {
    ValueList parts;
    size_t start = 0;
    for (size_t p = 0; p < s.size(); ++p) {
      if (s[p] == '\n' || s[p] == '\r') {
        parts.push_back(Value::String(t.Sub(start, p)));
        if (s[p] == '\r' && p + 1 < s.size() && s[p + 1] == '\n') ++p;
        start = p + 1;
      }
    }
    if (start < s.size()) parts.push_back(Value::String(t.Sub(start, s.size())));
    return Value::List(std::move(parts));
  }
  if (name == "startswith" || name == "endswith") {
    const Value& p = Arg(args, 0, "prefix", kUndefined);
    ValueList options = p.is_list() ? p.list() : ValueList{p};
    for (const Value& o : options) {
      const std::string& x = RequireString(o, name)->s;
      if (x.size() > s.size()) continue;
      if (name == "startswith" ? s.compare(0, x.size(), x) == 0
                               : s.compare(s.size() - x.size(), x.size(), x) == 0) {
        return Value::Bool(true);
      }
    }
    return Value::Bool(false);
  }
  if (name == "upper") return Value::String(ChangeCase(t, 'u'));
  if (name == "lower") return Value::String(ChangeCase(t, 'l'));
  if (name == "title") return Value::String(ChangeCase(t, 't'));
  if (name == "capitalize") {
    Text c = ChangeCase(t, 'c');
    return Value::String(std::move(c));
  }
  if (name == "replace") {
    const Text old = *RequireString(Arg(args, 0, "old", kUndefined), "replace");
    const Text with = *RequireString(Arg(args, 1, "new", kUndefined), "replace");
    const Value& c = Arg(args, 2, "count", Value::Int(-1));
    return Value::String(Replace(ev, t, old, with, ToIndex(c, "replace")));
  }
  if (name == "format") {
    Text out = Format(t, args);
    ev.CheckSize(out.s.size());
    return Value::String(std::move(out));
  }
  if (name == "join") {
    Text out;
    const ValueList items = Iterate(Arg(args, 0, "iterable", kUndefined));
    for (size_t k = 0; k < items.size(); ++k) {
      if (k) out.Append(t);
      out.Append(*RequireString(items[k], "join"));
      ev.CheckSize(out.s.size());
    }
    return Value::String(std::move(out));
  }
  if (name == "find" || name == "rfind" || name == "count" || name == "index") {
    const std::string x = RequireString(Arg(args, 0, "sub", kUndefined), name)->s;
    if (name == "count") {
      if (x.empty()) return Value::Int(Length(self) + 1);
      int64_t n = 0;
      for (size_t p = s.find(x); p != std::string::npos; p = s.find(x, p + x.size())) ++n;
      return Value::Int(n);
    }
    const size_t p = name == "rfind" ? s.rfind(x) : s.find(x);
    if (p == std::string::npos) {
      if (name == "index") Throw("substring not found");
      return Value::Int(-1);
    }
    return Value::Int(static_cast<int64_t>(CodePointOffsets(s.substr(0, p)).size()) - 1);
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" ||
      name == "isupper" || name == "islower") {
    if (s.empty()) return Value::Bool(false);
    bool all = true, any_cased = false;
    size_t p = 0;
    while (p < s.size()) {
      size_t len = 1;
      const uint32_t cp = DecodeAt(s, p, &len);
      p += len;
      const bool digit = cp >= '0' && cp <= '9';
      const bool alpha = cp < 0x80 ? std::isalpha(static_cast<int>(cp)) != 0 : IsCased(cp);
      if (name == "isdigit") all = all && digit;
      if (name == "isalpha") all = all && alpha;
      if (name == "isalnum") all = all && (alpha || digit);
      if (name == "isspace") all = all && IsPythonSpace(cp);
      if (name == "isupper" || name == "islower") {
        if (IsCased(cp)) {
          any_cased = true;
          const bool up = MapCase(cp, true) == cp;
          all = all && (name == "isupper" ? up : !up);
        }
      }
    }
    if (name == "isupper" || name == "islower") return Value::Bool(all && any_cased);
    return Value::Bool(all);
  }
  if (name == "center" || name == "ljust" || name == "rjust") {
    const int64_t width = ToIndex(Arg(args, 0, "width", Value::Int(0)), name);
    const int64_t n = Length(self);
    if (width > 1000000) Throw(name + ": width too large");
    if (width <= n) return self;
    const int64_t pad = width - n;
    int64_t left = name == "ljust" ? 0 : name == "rjust" ? pad : pad / 2 + (pad & width & 1);
    Text out(std::string(static_cast<size_t>(left), ' '));
    out.Append(t);
    out.Append(std::string(static_cast<size_t>(pad - left), ' '));
    return Value::String(std::move(out));
  }
  Throw("'str' object has no method '" + name + "'");
}

Value DictMethod(Evaluator&, const Value& self, const std::string& name, const CallArgs& args) {
  const Dict& d = self.dict();
  if (name == "items") {
    ValueList items;
    for (const auto& [k, v] : d.items) items.push_back(Value::Tuple({k, v}));
    return Value::List(std::move(items));
  }
  if (name == "keys" || name == "values") {
    ValueList items;
    for (const auto& [k, v] : d.items) items.push_back(name == "keys" ? k : v);
    return Value::List(std::move(items));
  }
  if (name == "get") {
    const Value* v = d.Find(Arg(args, 0, "key", kUndefined));
    return v ? *v : Arg(args, 1, "default", kNone);
  }
  Throw("'dict' object has no method '" + name + "'");
}

const char* const kStringMethods[] = {
    "strip",    "lstrip",  "rstrip",  "split",   "rsplit",     "splitlines", "startswith",
    "endswith", "upper",   "lower",   "title",   "capitalize", "replace",    "format",
    "join",     "find",    "rfind",   "count",   "index",      "isdigit",    "isalpha",
    "isalnum",  "isspace", "isupper", "islower", "center",     "ljust",      "rjust"};
const char* const kDictMethods[] = {"items", "keys", "values", "get"};
// Methods the immutable sandbox refuses (they would modify the caller's data).
const char* const kUnsafeMethods[] = {"append",  "extend", "insert",     "pop",     "remove",
                                      "clear",   "update", "setdefault", "popitem", "sort",
                                      "reverse", "add",    "discard"};

template <size_t N>
bool In(const char* const (&list)[N], const std::string& name) {
  for (const char* n : list) {
    if (name == n) return true;
  }
  return false;
}

Value BoundMethod(const Value& self, const std::string& name) {
  return Value::Callable(name, [self, name](Evaluator& ev, const CallArgs& args) -> Value {
    if (self.is_string()) return StringMethod(ev, self, name, args);
    if (self.is_dict()) return DictMethod(ev, self, name, args);
    if (self.is_list()) {
      const Value& x = Arg(args, 0, "value", kUndefined);
      if (name == "count") {
        int64_t n = 0;
        for (const Value& v : self.list()) n += Equal(v, x) ? 1 : 0;
        return Value::Int(n);
      }
      for (size_t k = 0; k < self.list().size(); ++k) {
        if (Equal(self.list()[k], x)) return Value::Int(static_cast<int64_t>(k));
      }
      Throw("list.index(x): x not in list");
    }
    Throw("no method '" + name + "'");
  });
}

// ---- tests ---------------------------------------------------------------------

bool RunTest(Evaluator& ev, const std::string& name, const Value& v, const CallArgs& args) {
  const Value& a = Arg(args, 0, "other", kUndefined);
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.b();
  if (name == "false") return v.is_bool() && !v.b();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "number") return v.is_number() || v.is_bool();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "sequence") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "callable") return v.is_callable();
  if (name == "sameas") {
    if (v.kind() != a.kind()) return false;
    if (v.is_none() || v.is_undefined()) return true;
    if (v.is_bool()) return v.b() == a.b();
    if (v.is_int()) return v.i() == a.i();  // small ints are the same object in CPython
    if (v.is_list()) return &v.list() == &a.list();
    if (v.is_dict()) return &v.dict() == &a.dict();
    return false;
  }
  if (name == "eq" || name == "equalto" || name == "==") return Equal(v, a);
  if (name == "ne" || name == "!=") return !Equal(v, a);
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!v.is_int() && !v.is_bool()) Throw("test '" + name + "' needs an integer");
    const int64_t x = v.is_bool() ? v.b() : v.i();
    if (name == "odd") return x % 2 != 0;
    if (name == "even") return x % 2 == 0;
    const int64_t d = ToIndex(Arg(args, 0, "num", kUndefined), "divisibleby");
    if (d == 0) Throw("divisibleby: division by zero");
    return x % d == 0;
  }
  if (name == "lower") return v.is_string() && ChangeCase(v.text(), 'l').s == v.str();
  if (name == "upper") return v.is_string() && ChangeCase(v.text(), 'u').s == v.str();
  if (name == "in") {
    const Value& seq = Arg(args, 0, "seq", kUndefined);
    if (seq.is_string()) return v.is_string() && seq.str().find(v.str()) != std::string::npos;
    if (seq.is_list()) {
      for (const Value& x : seq.list()) {
        if (Equal(x, v)) return true;
      }
      return false;
    }
    if (seq.is_dict()) return seq.dict().Find(v) != nullptr;
    Throw("test 'in' needs a sequence");
  }
  static const std::pair<const char*, const char*> kCompare[] = {
      {"lt", "<"}, {"lessthan", "<"},    {"<", "<"}, {"le", "<="}, {"<=", "<="},
      {"gt", ">"}, {"greaterthan", ">"}, {">", ">"}, {"ge", ">="}, {">=", ">="}};
  for (const auto& [n, op] : kCompare) {
    if (name == n) {
      const int c = CompareForSort(v, a, true);
      const std::string o = op;
      return o == "<" ? c < 0 : o == "<=" ? c <= 0 : o == ">" ? c > 0 : c >= 0;
    }
  }
  (void)ev;
  Throw("no test named '" + name + "'");
}

// ---- filters -------------------------------------------------------------------

Value RunFilter(Evaluator& ev, const std::string& name, const Value& v, const CallArgs& args) {
  if (name == "__slice__") return Slice(v, args);
  if (name == "tojson") {
    JsonOptions o;
    o.ensure_ascii = Arg(args, 1, "ensure_ascii", kFalse).Truthy();
    const Value& indent = Arg(args, 0, "indent", kNone);
    if (indent.is_int()) o.indent = static_cast<int>(std::clamp<int64_t>(indent.i(), 0, 64));
    if (indent.is_string()) Throw("tojson: a string indent is not supported");
    const Value& sep = Arg(args, 2, "separators", kNone);
    if (sep.is_list() && sep.list().size() == 2) {
      o.custom_separators = true;
      o.item_separator = RequireString(sep.list()[0], "tojson separators")->s;
      o.key_separator = RequireString(sep.list()[1], "tojson separators")->s;
    } else if (!sep.is_none()) {
      Throw("tojson: separators must be a pair of strings");
    }
    o.sort_keys = Arg(args, 3, "sort_keys", kFalse).Truthy();
    try {
      Text t = ToJson(v, o);
      ev.CheckSize(t.s.size());
      return Value::String(std::move(t));
    } catch (const Error& e) {
      Throw(e.what());
    }
  }
  if (name == "trim") return Value::String(Strip(v.ToText(), args.Get(0, "chars"), true, true));
  if (name == "upper" || name == "lower" || name == "capitalize" || name == "title") {
    const Text t = v.ToText();
    if (name == "capitalize") {
      Text lowered = ChangeCase(t, 'l');
      return Value::String(ChangeCase(lowered, 'c'));
    }
    return Value::String(ChangeCase(t, name == "upper" ? 'u' : name == "lower" ? 'l' : 'j'));
  }
  if (name == "length" || name == "count") return Value::Int(Length(v));
  if (name == "default" || name == "d") {
    const bool boolean = Arg(args, 1, "boolean", kFalse).Truthy();
    if (v.is_undefined() || (boolean && !v.Truthy())) {
      const Value* d = args.Get(0, "default_value");
      return d ? *d : Value::String("");
    }
    return v;
  }
  if (name == "join") {
    const Value& sep = Arg(args, 0, "d", Value::String(""));
    const Value* attribute = args.Get(1, "attribute");
    Text out;
    const ValueList items = Iterate(v);
    for (size_t k = 0; k < items.size(); ++k) {
      if (k) out.Append(sep.ToText());
      out.Append((attribute ? AttributePath(ev, items[k], *attribute) : items[k]).ToText());
      ev.CheckSize(out.s.size());
    }
    return Value::String(std::move(out));
  }
  if (name == "first" || name == "last") {
    const ValueList items = Iterate(v);
    if (items.empty()) return Value();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value::List(Iterate(v));
  if (name == "string") return Value::String(v.ToText());
  if (name == "safe" || name == "e" || name == "escape" || name == "forceescape") {
    if (name == "safe") return v;
    const Text t = v.ToText();
    std::string out;
    for (char c : t.s) {
      switch (c) {
        case '&':
          out += "&amp;";
          break;
        case '<':
          out += "&lt;";
          break;
        case '>':
          out += "&gt;";
          break;
        case '"':
          out += "&#34;";
          break;
        case '\'':
          out += "&#39;";
          break;
        default:
          out += c;
      }
    }
    return Value::String(std::move(out), t.any_untrusted());
  }
  if (name == "int") {
    const Value& dflt = Arg(args, 0, "default", Value::Int(0));
    if (v.is_int()) return v;
    if (v.is_bool()) return Value::Int(v.b());
    if (v.is_float()) {
      if (!std::isfinite(v.f()) || std::fabs(v.f()) > 9.2e18) return dflt;
      return Value::Int(static_cast<int64_t>(v.f()));
    }
    if (v.is_string()) {
      const std::string s = Strip(v.text(), nullptr, true, true).s;
      char* end = nullptr;
      errno = 0;
      const long long x = std::strtoll(s.c_str(), &end, 10);
      if (!s.empty() && end == s.c_str() + s.size() && errno == 0) return Value::Int(x);
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size() && std::isfinite(d) && std::fabs(d) < 9.2e18) {
        return Value::Int(static_cast<int64_t>(d));
      }
    }
    return dflt;
  }
  if (name == "float") {
    const Value& dflt = Arg(args, 0, "default", Value::Float(0.0));
    if (v.is_number() || v.is_bool()) return Value::Float(v.AsDouble());
    if (v.is_string()) {
      const std::string s = Strip(v.text(), nullptr, true, true).s;
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size()) return Value::Float(d);
    }
    return dflt;
  }
  if (name == "abs") {
    if (v.is_float()) return Value::Float(std::fabs(v.f()));
    if (v.is_int() && v.i() != INT64_MIN) return Value::Int(v.i() < 0 ? -v.i() : v.i());
    Throw("abs: a number is required");
  }
  if (name == "round") {
    const int64_t precision = ToIndex(Arg(args, 0, "precision", Value::Int(0)), "round");
    const std::string method = Arg(args, 1, "method", Value::String("common")).ToText().s;
    if (!(v.is_number() || v.is_bool())) Throw("round: a number is required");
    const double scale =
        std::pow(10.0, static_cast<double>(std::clamp<int64_t>(precision, -30, 30)));
    double x = v.AsDouble() * scale;
    // Python's round(): halves to even.
    x = method == "ceil" ? std::ceil(x) : method == "floor" ? std::floor(x) : std::nearbyint(x);
    return Value::Float(x / scale);
  }
  if (name == "items" || name == "dictsort") {
    if (v.is_undefined()) return Value::List();
    if (!v.is_dict()) Throw(name + ": a mapping is required, not " + v.TypeName());
    ValueList items;
    for (const auto& [k, x] : v.dict().items) items.push_back(Value::Tuple({k, x}));
    if (name == "dictsort") {
      const bool cs = Arg(args, 0, "case_sensitive", kFalse).Truthy();
      const bool by_value = Arg(args, 1, "by", Value::String("key")).ToText().s == "value";
      const bool rev = Arg(args, 2, "reverse", kFalse).Truthy();
      std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
        const int c = CompareForSort(a.list()[by_value], b.list()[by_value], cs);
        return rev ? c > 0 : c < 0;
      });
    }
    return Value::List(std::move(items));
  }
  if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
    const bool attr = name == "selectattr" || name == "rejectattr";
    const bool keep_if = name == "selectattr" || name == "select";
    const Value* attribute = attr ? args.Get(0, "attribute") : nullptr;
    if (attr && !attribute) Throw(name + ": the attribute is missing");
    const size_t test_index = attr ? 1 : 0;
    const Value* test =
        test_index < args.positional.size() ? &args.positional[test_index] : nullptr;
    CallArgs test_args;
    for (size_t k = test_index + 1; k < args.positional.size(); ++k) {
      test_args.positional.push_back(args.positional[k]);
    }
    ValueList out;
    for (const Value& item : Iterate(v)) {
      const Value x = attribute ? AttributePath(ev, item, *attribute) : item;
      const bool ok = test ? ev.Test(RequireString(*test, name)->s, x, test_args) : x.Truthy();
      if (ok == keep_if) out.push_back(item);
    }
    return Value::List(std::move(out));
  }
  if (name == "map") {
    ValueList out;
    const Value* attribute = nullptr;
    for (const auto& [k, x] : args.keyword) {
      if (k == "attribute") attribute = &x;
    }
    if (attribute) {
      const Value* dflt = nullptr;
      for (const auto& [k, x] : args.keyword) {
        if (k == "default") dflt = &x;
      }
      for (const Value& item : Iterate(v)) {
        Value x = AttributePath(ev, item, *attribute);
        out.push_back(x.is_undefined() && dflt ? *dflt : x);
      }
      return Value::List(std::move(out));
    }
    if (args.positional.empty()) Throw("map: a filter name or attribute= is required");
    const std::string& filter = RequireString(args.positional[0], "map")->s;
    CallArgs rest;
    rest.positional.assign(args.positional.begin() + 1, args.positional.end());
    rest.keyword = args.keyword;
    for (const Value& item : Iterate(v)) out.push_back(ev.Filter(filter, item, rest));
    return Value::List(std::move(out));
  }
  if (name == "replace") {
    const Text t = v.is_string() ? v.text() : v.ToText();
    const Text old = Arg(args, 0, "old", kUndefined).ToText();
    const Text with = Arg(args, 1, "new", kUndefined).ToText();
    const Value& c = Arg(args, 2, "count", kNone);
    return Value::String(Replace(ev, t, old, with, c.is_none() ? -1 : ToIndex(c, "replace")));
  }
  if (name == "indent") {
    const Value& w = Arg(args, 0, "width", Value::Int(4));
    std::string pad;
    if (w.is_string()) {
      pad = w.str();
    } else {
      pad.assign(static_cast<size_t>(std::clamp<int64_t>(ToIndex(w, "indent"), 0, 1000)), ' ');
    }
    const bool first = Arg(args, 1, "first", kFalse).Truthy();
    const bool blank = Arg(args, 2, "blank", kFalse).Truthy();
    const Text t = v.ToText();
    Text out;
    size_t start = 0;
    bool is_first = true;
    while (start <= t.s.size()) {
      size_t nl = t.s.find('\n', start);
      const size_t end = nl == std::string::npos ? t.s.size() : nl;
      const bool empty_line = end == start;
      if ((is_first ? first : true) && (blank || !empty_line)) out.Append(pad);
      out.Append(t.Sub(start, nl == std::string::npos ? end : end + 1));
      ev.CheckSize(out.s.size());
      is_first = false;
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
    return Value::String(std::move(out));
  }
  if (name == "unique" || name == "reverse" || name == "sort" || name == "sum" || name == "min" ||
      name == "max") {
    if (name == "reverse" && v.is_string()) {
      CallArgs s;
      s.positional = {Value(), Value(), Value::Int(-1)};
      return Slice(v, s);
    }
    ValueList items = Iterate(v);
    if (name == "reverse") {
      std::reverse(items.begin(), items.end());
      return Value::List(std::move(items));
    }
    const Value* attribute = nullptr;
    for (const auto& [k, x] : args.keyword) {
      if (k == "attribute") attribute = &x;
    }
    auto key = [&](const Value& x) { return attribute ? AttributePath(ev, x, *attribute) : x; };
    if (name == "sum") {
      Value total = Arg(args, 1, "start", Value::Int(0));
      for (const Value& x : items) {
        const Value k = key(x);
        if (!(k.is_number() || k.is_bool()) || !(total.is_number() || total.is_bool())) {
          Throw("sum: numbers are required");
        }
        if (k.is_float() || total.is_float()) {
          total = Value::Float(total.AsDouble() + k.AsDouble());
        } else {
          total = Value::Int(total.i() + (k.is_bool() ? k.b() : k.i()));
        }
      }
      return total;
    }
    const bool cs = Arg(args, name == "sort" ? 1 : 0, "case_sensitive", kFalse).Truthy();
    if (name == "unique") {
      ValueList out;
      for (const Value& x : items) {
        bool seen = false;
        for (const Value& y : out) {
          const Value a = key(x), b = key(y);
          seen = seen || (a.is_string() && b.is_string() && !cs
                              ? ChangeCase(a.text(), 'l').s == ChangeCase(b.text(), 'l').s
                              : Equal(a, b));
        }
        if (!seen) out.push_back(x);
      }
      return Value::List(std::move(out));
    }
    if (name == "min" || name == "max") {
      if (items.empty()) return Value();
      size_t best = 0;
      for (size_t k = 1; k < items.size(); ++k) {
        const int c = CompareForSort(key(items[k]), key(items[best]), cs);
        if (name == "min" ? c < 0 : c > 0) best = k;
      }
      return items[best];
    }
    const bool rev = Arg(args, 0, "reverse", kFalse).Truthy();
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      const int c = CompareForSort(key(a), key(b), cs);
      return rev ? c > 0 : c < 0;
    });
    return Value::List(std::move(items));
  }
  if (name == "center") {
    return StringMethod(ev, v.is_string() ? v : Value::String(v.ToText()), "center", args);
  }
  if (name == "wordcount")
    return Value::Int(static_cast<int64_t>(Split(v.ToText(), nullptr, -1).size()));
  if (name == "format") {
    Throw("the format filter is not supported (use the % operator or str.format)");
  }
  if (name == "attr") {
    const std::string attr = RequireString(Arg(args, 0, "name", kUndefined), "attr")->s;
    return ev.GetAttr(v, attr);
  }
  if (name == "batch") {
    const int64_t n = ToIndex(Arg(args, 0, "linecount", kUndefined), "batch");
    if (n <= 0) Throw("batch: the size must be positive");
    ValueList out, cur;
    for (const Value& x : Iterate(v)) {
      cur.push_back(x);
      if (static_cast<int64_t>(cur.size()) == n) {
        out.push_back(Value::List(std::move(cur)));
        cur.clear();
      }
    }
    if (!cur.empty()) {
      if (const Value* fill = args.Get(1, "fill_with"); fill && !fill->is_none()) {
        while (static_cast<int64_t>(cur.size()) < n) cur.push_back(*fill);
      }
      out.push_back(Value::List(std::move(cur)));
    }
    return Value::List(std::move(out));
  }
  Throw("no filter named '" + name + "'");
}

}  // namespace

// ---- Evaluator entry points ------------------------------------------------------

Value Evaluator::Filter(const std::string& name, const Value& value, const CallArgs& args) {
  return RunFilter(*this, name, value, args);
}

bool Evaluator::Test(const std::string& name, const Value& value, const CallArgs& args) {
  return RunTest(*this, name, value, args);
}

Value Evaluator::GetAttr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      Throw("an undefined value has no attribute '" + name + "'");
    case Value::Kind::kDict: {
      if (!obj.is_namespace() && In(kDictMethods, name)) return BoundMethod(obj, name);
      if (!obj.is_namespace() && In(kUnsafeMethods, name)) {
        Throw("access to attribute '" + name + "' of 'dict' object is unsafe");
      }
      const Value* v = obj.dict().Find(Value::String(name));
      return v ? *v : Value();
    }
    case Value::Kind::kString:
      if (In(kStringMethods, name)) return BoundMethod(obj, name);
      return Value();
    case Value::Kind::kList:
      if (name == "index" || name == "count") return BoundMethod(obj, name);
      if (In(kUnsafeMethods, name)) {
        Throw("access to attribute '" + name + "' of 'list' object is unsafe");
      }
      return Value();
    default:
      return Value();
  }
}

Value Evaluator::GetItem(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::kUndefined:
      Throw("an undefined value has no item " + key.Repr());
    case Value::Kind::kDict: {
      const Value* v = obj.dict().Find(key);
      if (v) return *v;
      if (key.is_string() && !obj.is_namespace()) return GetAttr(obj, key.str());
      return Value();
    }
    case Value::Kind::kList:
    case Value::Kind::kString: {
      if (!key.is_int() && !key.is_bool()) {
        if (key.is_string()) return GetAttr(obj, key.str());
        return Value();
      }
      int64_t i = key.is_bool() ? key.b() : key.i();
      if (obj.is_list()) {
        const int64_t n = static_cast<int64_t>(obj.list().size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value();
        return obj.list()[static_cast<size_t>(i)];
      }
      const std::vector<size_t> offs = CodePointOffsets(obj.str());
      const int64_t n = static_cast<int64_t>(offs.size()) - 1;
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value();
      return Value::String(
          obj.text().Sub(offs[static_cast<size_t>(i)], offs[static_cast<size_t>(i + 1)]));
    }
    default:
      return Value();
  }
}

ValueList Iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kUndefined:
      return {};
    case Value::Kind::kList:
      return v.list();
    case Value::Kind::kDict: {
      ValueList keys;
      for (const auto& [k, x] : v.dict().items) keys.push_back(k);
      return keys;
    }
    case Value::Kind::kString: {
      ValueList chars;
      const std::vector<size_t> offs = CodePointOffsets(v.str());
      for (size_t k = 0; k + 1 < offs.size(); ++k) {
        chars.push_back(Value::String(v.text().Sub(offs[k], offs[k + 1])));
      }
      return chars;
    }
    default:
      Throw(std::string("'") + v.TypeName() + "' object is not iterable");
  }
}

void AddGlobals(std::unordered_map<std::string, Value>* g) {
  (*g)["range"] = Value::Callable("range", [](Evaluator&, const CallArgs& args) -> Value {
    int64_t start = 0, stop = 0, step = 1;
    const ValueList& p = args.positional;
    if (p.size() == 1) {
      stop = ToIndex(p[0], "range");
    } else if (p.size() == 2 || p.size() == 3) {
      start = ToIndex(p[0], "range");
      stop = ToIndex(p[1], "range");
      if (p.size() == 3) step = ToIndex(p[2], "range");
    } else {
      Throw("range expects 1 to 3 arguments");
    }
    if (step == 0) Throw("range() arg 3 must not be zero");
    const double count = std::ceil((static_cast<double>(stop) - static_cast<double>(start)) /
                                   static_cast<double>(step));
    if (count > 100000) {
      Throw("range too big: the sandbox allows at most 100000 items (as Jinja2's does)");
    }
    ValueList out;
    for (int64_t x = start; step > 0 ? x < stop : x > stop; x += step) out.push_back(Value::Int(x));
    return Value::List(std::move(out));
  });
  (*g)["dict"] = Value::Callable("dict", [](Evaluator&, const CallArgs& args) -> Value {
    Dict d;
    for (const Value& p : args.positional) {
      if (!p.is_dict()) Throw("dict() takes a mapping");
      for (const auto& [k, v] : p.dict().items) d.Set(k, v);
    }
    for (const auto& [k, v] : args.keyword) d.Set(Value::String(k), v);
    return Value::MakeDict(std::move(d));
  });
  (*g)["namespace"] = Value::Callable("namespace", [](Evaluator&, const CallArgs& args) -> Value {
    Dict d;
    for (const Value& p : args.positional) {
      if (!p.is_dict()) Throw("namespace() takes a mapping");
      for (const auto& [k, v] : p.dict().items) d.Set(k, v);
    }
    for (const auto& [k, v] : args.keyword) d.Set(Value::String(k), v);
    return Value::Namespace(std::move(d));
  });
  (*g)["raise_exception"] =
      Value::Callable("raise_exception", [](Evaluator&, const CallArgs& args) -> Value {
        const Value& m = Arg(args, 0, "message", kUndefined);
        Throw("raise_exception: " + m.ToText().s);
      });
  (*g)["strftime_now"] =
      Value::Callable("strftime_now", [](Evaluator&, const CallArgs& args) -> Value {
        const std::string f = RequireString(Arg(args, 0, "format", kUndefined), "strftime_now")->s;
        if (f.size() > 256) Throw("strftime_now: format too long");
        const std::time_t now = std::time(nullptr);
        std::tm tm{};
        localtime_r(&now, &tm);
        char buf[1024];
        const size_t n = std::strftime(buf, sizeof buf, f.c_str(), &tm);
        return Value::String(std::string(buf, n));
      });
}

}  // namespace stip::jinja
