#include "common/jinja/evaluator.h"

#include <cmath>

#include "common/error.h"
#include "common/jinja/lexer.h"

namespace stip::jinja {

using K = Node::Kind;

void Throw(const std::string& message) { throw RuntimeError{message, false}; }

Evaluator::Evaluator(const std::string& name, const RenderLimits& limits, const Value& context)
    : name_(name), limits_(limits) {
  AddGlobals(&globals_);
  if (!context.is_dict()) throw InvalidArgument(name + ": the render context must be a dict");
  for (const auto& [k, v] : context.dict().items) {
    if (k.is_string()) root_[k.str()] = v;
  }
}

void Evaluator::Fail(const Node& n, const std::string& message, bool resource) const {
  const std::string m = Where(name_, n.line, n.column) + ": " + message;
  if (resource) throw ResourceExhausted(m);
  throw InvalidArgument(m);
}

void Evaluator::Step() {
  if (++steps_ > limits_.max_steps) {
    throw RuntimeError{
        "the template took more than " + std::to_string(limits_.max_steps) + " evaluation steps",
        true};
  }
}

void Evaluator::CheckSize(size_t bytes) const {
  if (bytes > limits_.max_output_bytes) {
    throw RuntimeError{
        "the template's output exceeds " + std::to_string(limits_.max_output_bytes) + " bytes",
        true};
  }
}

Text Evaluator::Render(const Node& root) {
  try {
    ExecBody(root);
  } catch (const RuntimeError& e) {
    // Only limits reach here without a node (statement-level checks).
    if (e.resource) throw ResourceExhausted(name_ + ": " + e.message);
    throw InvalidArgument(name_ + ": " + e.message);
  }
  return std::move(out_);
}

void Evaluator::Emit(const Text& t) {
  CheckSize(out_.s.size() + t.s.size());
  out_.Append(t);
}

Value Evaluator::Lookup(const std::string& name) const {
  for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
    auto f = it->find(name);
    if (f != it->end()) return f->second;
  }
  if (auto f = root_.find(name); f != root_.end()) return f->second;
  if (auto g = globals_.find(name); g != globals_.end()) return g->second;
  return Value();
}

void Evaluator::Assign(const std::string& name, Value v) {
  if (frames_.empty()) {
    root_[name] = std::move(v);
  } else {
    frames_.back()[name] = std::move(v);
  }
}

void Evaluator::AssignTargets(const Node& n, const std::vector<std::string>& targets,
                              const Value& v) {
  if (targets.size() == 1) {
    Assign(targets[0], v);
    return;
  }
  ValueList items = Iterate(v);
  if (items.size() != targets.size()) {
    Fail(n, "cannot unpack " + std::to_string(items.size()) + " values into " +
                std::to_string(targets.size()) + " names");
  }
  for (size_t k = 0; k < targets.size(); ++k) Assign(targets[k], items[k]);
}

Text Evaluator::Capture(const Node& body) {
  Text saved = std::move(out_);
  out_ = Text();
  try {
    ExecBody(body);
  } catch (...) {
    out_ = std::move(saved);
    throw;
  }
  Text captured = std::move(out_);
  out_ = std::move(saved);
  return captured;
}

Evaluator::Flow Evaluator::ExecBody(const Node& body) {
  for (const NodePtr& kid : body.kids) {
    const Flow f = Exec(*kid);
    if (f != Flow::kNormal) return f;
  }
  return Flow::kNormal;
}

Evaluator::Flow Evaluator::Exec(const Node& n) {
  try {
    Step();
  } catch (const RuntimeError& e) {
    Fail(n, e.message, e.resource);
  }
  switch (n.kind) {
    case K::kBody:
      return ExecBody(n);
    case K::kData:
      Emit(Text(n.name));
      return Flow::kNormal;
    case K::kOutput: {
      const Value v = Eval(*n.kids[0]);
      try {
        Emit(v.ToText());
      } catch (const RuntimeError& e) {
        Fail(n, e.message, e.resource);
      }
      return Flow::kNormal;
    }
    case K::kIf:
      if (Eval(*n.kids[0]).Truthy()) return Exec(*n.kids[1]);
      if (n.kids[2]) return Exec(*n.kids[2]);
      return Flow::kNormal;
    case K::kFor:
      ExecFor(n);
      return Flow::kNormal;
    case K::kSet: {
      Value v = Eval(*n.kids[0]);
      if (!n.attr.empty()) {
        Value ns = Lookup(n.targets[0]);
        if (!ns.is_namespace()) {
          Fail(n, "cannot assign attribute '" + n.attr + "' on " +
                      (ns.is_undefined() ? "undefined '" + n.targets[0] + "'"
                                         : std::string("a ") + ns.TypeName()) +
                      " (only a namespace() takes attributes)");
        }
        ns.mutable_dict().Set(Value::String(n.attr), std::move(v));
      } else {
        AssignTargets(n, n.targets, v);
      }
      return Flow::kNormal;
    }
    case K::kSetBlock: {
      Value v = Value::String(Capture(*n.kids[0]));
      if (n.kids[1]) {
        // Apply the filter chain innermost first.
        std::vector<const Node*> chain;
        for (const Node* f = n.kids[1].get(); f; f = f->kids[0].get()) chain.push_back(f);
        for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
          CallArgs args = EvalArgs(**it, 1);
          try {
            v = Filter((*it)->name, v, args);
          } catch (const RuntimeError& e) {
            Fail(**it, e.message, e.resource);
          }
        }
      }
      Assign(n.targets[0], std::move(v));
      return Flow::kNormal;
    }
    case K::kFilterBlock: {
      Value v = Value::String(Capture(*n.kids[0]));
      std::vector<const Node*> chain;
      for (const Node* f = n.kids[1].get(); f; f = f->kids[0].get()) chain.push_back(f);
      for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
        CallArgs args = EvalArgs(**it, 1);
        try {
          v = Filter((*it)->name, v, args);
        } catch (const RuntimeError& e) {
          Fail(**it, e.message, e.resource);
        }
      }
      try {
        Emit(v.ToText());
      } catch (const RuntimeError& e) {
        Fail(n, e.message, e.resource);
      }
      return Flow::kNormal;
    }
    case K::kMacro:
      Assign(n.name, DefineMacro(n));
      return Flow::kNormal;
    case K::kBreak:
      return Flow::kBreak;
    case K::kContinue:
      return Flow::kContinue;
    default:
      Fail(n, "internal error: an expression where a statement belongs");
  }
}

void Evaluator::ExecFor(const Node& n) {
  const Value seq = Eval(*n.kids[0]);
  ValueList items;
  try {
    items = Iterate(seq);
  } catch (const RuntimeError& e) {
    Fail(*n.kids[0], e.message, e.resource);
  }
  if (n.kids[3]) {  // {% for x in xs if cond %}: filter first, loop.* counts what is left
    ValueList kept;
    for (const Value& item : items) {
      frames_.emplace_back();
      AssignTargets(n, n.targets, item);
      const bool keep = Eval(*n.kids[3]).Truthy();
      frames_.pop_back();
      if (keep) kept.push_back(item);
    }
    items = std::move(kept);
  }
  if (items.empty()) {
    if (n.kids[2]) {
      frames_.emplace_back();
      ExecBody(*n.kids[2]);
      frames_.pop_back();
    }
    return;
  }
  const int64_t length = static_cast<int64_t>(items.size());
  for (int64_t k = 0; k < length; ++k) {
    frames_.emplace_back();
    struct Pop {
      std::vector<std::unordered_map<std::string, Value>>& f;
      ~Pop() { f.pop_back(); }
    } pop{frames_};
    Dict loop;
    loop.Set(Value::String("index"), Value::Int(k + 1));
    loop.Set(Value::String("index0"), Value::Int(k));
    loop.Set(Value::String("revindex"), Value::Int(length - k));
    loop.Set(Value::String("revindex0"), Value::Int(length - k - 1));
    loop.Set(Value::String("first"), Value::Bool(k == 0));
    loop.Set(Value::String("last"), Value::Bool(k == length - 1));
    loop.Set(Value::String("length"), Value::Int(length));
    loop.Set(Value::String("depth"), Value::Int(1));
    loop.Set(Value::String("depth0"), Value::Int(0));
    if (k > 0) loop.Set(Value::String("previtem"), items[static_cast<size_t>(k - 1)]);
    if (k + 1 < length) loop.Set(Value::String("nextitem"), items[static_cast<size_t>(k + 1)]);
    loop.Set(Value::String("cycle"),
             Value::Callable("loop.cycle", [k](Evaluator&, const CallArgs& args) -> Value {
               if (args.positional.empty()) Throw("loop.cycle() needs at least one value");
               return args.positional[static_cast<size_t>(k) % args.positional.size()];
             }));
    frames_.back()["loop"] = Value::MakeDict(std::move(loop));
    AssignTargets(n, n.targets, items[static_cast<size_t>(k)]);
    if (ExecBody(*n.kids[1]) == Flow::kBreak) break;
  }
}

Value Evaluator::DefineMacro(const Node& n) {
  const Node* node = &n;
  return Value::Callable(n.name, [node](Evaluator& ev, const CallArgs& args) -> Value {
    const Node& m = *node;
    if (ev.call_depth_ >= ev.limits_.max_call_depth) {
      throw RuntimeError{
          "macro calls nested more than " + std::to_string(ev.limits_.max_call_depth) + " deep",
          true};
    }
    if (args.positional.size() > m.targets.size()) {
      Throw("macro '" + m.name + "' takes " + std::to_string(m.targets.size()) +
            " arguments, got " + std::to_string(args.positional.size()));
    }
    std::unordered_map<std::string, Value> frame;
    for (const auto& [k, v] : args.keyword) {
      bool known = false;
      for (const std::string& t : m.targets) known = known || t == k;
      if (!known) Throw("macro '" + m.name + "' has no parameter '" + k + "'");
      frame[k] = v;
    }
    for (size_t p = 0; p < m.targets.size(); ++p) {
      if (p < args.positional.size()) {
        frame[m.targets[p]] = args.positional[p];
      } else if (!frame.count(m.targets[p]) && m.kids[1 + p]) {
        frame[m.targets[p]] = ev.Eval(*m.kids[1 + p]);
      }
    }
    std::vector<std::unordered_map<std::string, Value>> saved = std::move(ev.frames_);
    ev.frames_.clear();
    ev.frames_.push_back(std::move(frame));
    ++ev.call_depth_;
    Text out;
    try {
      out = ev.Capture(*m.kids[0]);
    } catch (...) {
      --ev.call_depth_;
      ev.frames_ = std::move(saved);
      throw;
    }
    --ev.call_depth_;
    ev.frames_ = std::move(saved);
    return Value::String(std::move(out));
  });
}

CallArgs Evaluator::EvalArgs(const Node& n, size_t first) {
  CallArgs args;
  for (size_t k = first; k < n.kids.size(); ++k) {
    Value v = Eval(*n.kids[k]);
    const std::string& kw = n.arg_names[k - first];
    if (kw.empty()) {
      args.positional.push_back(std::move(v));
    } else {
      args.keyword.emplace_back(kw, std::move(v));
    }
  }
  return args;
}

Value Evaluator::Eval(const Node& n) {
  try {
    Step();
    return EvalInner(n);
  } catch (const RuntimeError& e) {
    Fail(n, e.message, e.resource);
  }
}

namespace {

int64_t CheckedInt(bool overflow, const int64_t& v) {
  if (overflow) Throw("integer overflow");
  return v;
}

bool IsNum(const Value& v) { return v.is_number() || v.is_bool(); }
int64_t IntOf(const Value& v) { return v.is_bool() ? (v.b() ? 1 : 0) : v.i(); }

[[noreturn]] void Unsupported(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined() || b.is_undefined()) {
    Throw("an undefined value used with '" + op + "'");
  }
  Throw("unsupported operand types for " + op + ": '" + a.TypeName() + "' and '" + b.TypeName() +
        "'");
}

// Python's "%" string formatting (the common conversions).
Text PercentFormat(const Value& fmt, const Value& arg) {
  ValueList args = arg.is_list() ? arg.list() : ValueList{arg};
  const Text& f = fmt.text();
  Text out;
  size_t next = 0, last = 0;
  for (size_t p = 0; p < f.s.size(); ++p) {
    if (f.s[p] != '%') continue;
    out.Append(f.Sub(last, p));
    if (p + 1 >= f.s.size()) Throw("incomplete format");
    const char c = f.s[p + 1];
    last = p + 2;
    ++p;
    if (c == '%') {
      out.Append("%");
      continue;
    }
    if (next >= args.size()) Throw("not enough arguments for format string");
    const Value& a = args[next++];
    if (c == 's') {
      out.Append(a.ToText());
    } else if (c == 'r') {
      Text t(a.Repr(), a.is_string() && a.text().any_untrusted());
      out.Append(t);
    } else if (c == 'd' || c == 'i') {
      if (!IsNum(a)) Throw("%d format: a number is required, not " + std::string(a.TypeName()));
      out.Append(std::to_string(a.is_float() ? static_cast<int64_t>(a.f()) : IntOf(a)));
    } else if (c == 'f') {
      if (!IsNum(a)) Throw("%f format: a number is required");
      char buf[64];
      std::snprintf(buf, sizeof buf, "%f", a.AsDouble());
      out.Append(buf);
    } else {
      Throw(std::string("unsupported format character '") + c + "'");
    }
  }
  out.Append(f.Sub(last, f.s.size()));
  if (next < args.size()) Throw("not all arguments converted during string formatting");
  return out;
}

}  // namespace

Value Evaluator::Binary(const Node& n, const std::string& op, const Value& a, const Value& b) {
  (void)n;
  if (op == "~") {
    Text t = a.ToText();
    t.Append(b.ToText());
    CheckSize(t.s.size());
    return Value::String(std::move(t));
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      CheckSize(a.str().size() + b.str().size());
      Text t = a.text();
      t.Append(b.text());
      return Value::String(std::move(t));
    }
    if (a.is_list() && b.is_list()) {
      ValueList l = a.list();
      l.insert(l.end(), b.list().begin(), b.list().end());
      return Value::List(std::move(l));
    }
  }
  if (op == "*") {
    const Value* s = a.is_string() || a.is_list()   ? &a
                     : b.is_string() || b.is_list() ? &b
                                                    : nullptr;
    const Value* count = s == &a ? &b : &a;
    if (s && (count->is_int() || count->is_bool())) {
      const int64_t times = std::max<int64_t>(0, IntOf(*count));
      if (s->is_string()) {
        if (times > 0) CheckSize(s->str().size() * static_cast<size_t>(times));
        if (times > 0 &&
            s->str().size() * static_cast<size_t>(times) / static_cast<size_t>(times) !=
                s->str().size()) {
          Throw("string repetition too large");
        }
        Text t;
        for (int64_t k = 0; k < times; ++k) t.Append(s->text());
        return Value::String(std::move(t));
      }
      if (times > 0 && s->list().size() * static_cast<size_t>(times) > 1000000) {
        Throw("list repetition too large");
      }
      ValueList l;
      for (int64_t k = 0; k < times; ++k) l.insert(l.end(), s->list().begin(), s->list().end());
      return Value::List(std::move(l));
    }
  }
  if (op == "%" && a.is_string()) {
    Text t = PercentFormat(a, b);
    CheckSize(t.s.size());
    return Value::String(std::move(t));
  }
  if (!IsNum(a) || !IsNum(b)) Unsupported(op, a, b);
  const bool ints = !a.is_float() && !b.is_float();
  if (ints) {
    const int64_t x = IntOf(a), y = IntOf(b);
    int64_t r = 0;
    if (op == "+") {
      const bool overflow = __builtin_add_overflow(x, y, &r);
      return Value::Int(CheckedInt(overflow, r));
    }
    if (op == "-") {
      const bool overflow = __builtin_sub_overflow(x, y, &r);
      return Value::Int(CheckedInt(overflow, r));
    }
    if (op == "*") {
      const bool overflow = __builtin_mul_overflow(x, y, &r);
      return Value::Int(CheckedInt(overflow, r));
    }
    if (op == "/") {
      if (y == 0) Throw("division by zero");
      return Value::Float(static_cast<double>(x) / static_cast<double>(y));
    }
    if (op == "//" || op == "%") {
      if (y == 0) Throw("integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) Throw("integer overflow");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      return Value::Int(op == "//" ? q : m);
    }
    if (op == "**") {
      if (y < 0) return Value::Float(std::pow(static_cast<double>(x), static_cast<double>(y)));
      int64_t result = 1, base = x, e = y;
      while (e > 0) {
        if (e & 1) {
          const bool overflow = __builtin_mul_overflow(result, base, &r);
          result = CheckedInt(overflow, r);
        }
        e >>= 1;
        if (e > 0) {
          const bool overflow = __builtin_mul_overflow(base, base, &r);
          base = CheckedInt(overflow, r);
        }
      }
      return Value::Int(result);
    }
  } else {
    const double x = a.AsDouble(), y = b.AsDouble();
    if (op == "+") return Value::Float(x + y);
    if (op == "-") return Value::Float(x - y);
    if (op == "*") return Value::Float(x * y);
    if (op == "/") {
      if (y == 0) Throw("float division by zero");
      return Value::Float(x / y);
    }
    if (op == "//" || op == "%") {
      if (y == 0) Throw("float modulo by zero");
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      if (op == "%") return Value::Float(m);
      return Value::Float(std::floor(x / y));
    }
    if (op == "**") return Value::Float(std::pow(x, y));
  }
  Unsupported(op, a, b);
}

bool Evaluator::CompareOp(const Node& n, const std::string& op, const Value& a, const Value& b) {
  (void)n;
  if (op == "==") return Equal(a, b);
  if (op == "!=") return !Equal(a, b);
  if (op == "in" || op == "notin") {
    bool found = false;
    if (b.is_string()) {
      if (!a.is_string()) {
        Throw(std::string("'in <string>' requires a string as left operand, not ") + a.TypeName());
      }
      found = b.str().find(a.str()) != std::string::npos;
    } else if (b.is_list()) {
      for (const Value& v : b.list()) found = found || Equal(v, a);
    } else if (b.is_dict()) {
      found = b.dict().Find(a) != nullptr;
    } else if (b.is_undefined()) {
      Throw("'in' on an undefined value");
    } else {
      Throw(std::string("argument of type '") + b.TypeName() + "' is not iterable");
    }
    return op == "in" ? found : !found;
  }
  int c = 0;
  if (IsNum(a) && IsNum(b)) {
    if (!a.is_float() && !b.is_float()) {
      c = IntOf(a) < IntOf(b) ? -1 : IntOf(a) > IntOf(b) ? 1 : 0;
    } else {
      const double x = a.AsDouble(), y = b.AsDouble();
      if (std::isnan(x) || std::isnan(y)) return false;
      c = x < y ? -1 : x > y ? 1 : 0;
    }
  } else if (a.is_string() && b.is_string()) {
    c = a.str().compare(b.str());
  } else if (a.is_list() && b.is_list()) {
    size_t k = 0;
    for (; k < a.list().size() && k < b.list().size(); ++k) {
      if (!Equal(a.list()[k], b.list()[k])) {
        return CompareOp(n, op, a.list()[k], b.list()[k]);
      }
    }
    c = a.list().size() < b.list().size() ? -1 : a.list().size() > b.list().size() ? 1 : 0;
  } else {
    Unsupported(op, a, b);
  }
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

Value Evaluator::EvalInner(const Node& n) {
  switch (n.kind) {
    case K::kLiteral:
      return n.literal;
    case K::kName:
      return Lookup(n.name);
    case K::kGetattr:
      return GetAttr(Eval(*n.kids[0]), n.name);
    case K::kGetitem: {
      Value obj = Eval(*n.kids[0]);
      return GetItem(obj, Eval(*n.kids[1]));
    }
    case K::kSlice: {
      const Value obj = Eval(*n.kids[0]);
      Value parts[3];
      for (int k = 0; k < 3; ++k) {
        if (n.kids[1 + k]) parts[k] = Eval(*n.kids[1 + k]);
      }
      CallArgs args;
      for (auto& p : parts) args.positional.push_back(p);
      return Filter("__slice__", obj, args);
    }
    case K::kCall: {
      const Value callee = Eval(*n.kids[0]);
      CallArgs args = EvalArgs(n, 1);
      if (!callee.is_callable()) {
        if (callee.is_undefined()) {
          const Node& c = *n.kids[0];
          Throw("'" +
                (c.kind == K::kName      ? c.name
                 : c.kind == K::kGetattr ? c.name
                                         : "value") +
                "' is undefined (not a function)");
        }
        Throw(std::string("'") + callee.TypeName() + "' object is not callable");
      }
      return callee.function()(*this, args);
    }
    case K::kFilter: {
      const Value v = Eval(*n.kids[0]);
      CallArgs args = EvalArgs(n, 1);
      return Filter(n.name, v, args);
    }
    case K::kTest: {
      const Value v = Eval(*n.kids[0]);
      CallArgs args = EvalArgs(n, 1);
      return Value::Bool(Test(n.name, v, args) != n.negated);
    }
    case K::kUnary: {
      const Value v = Eval(*n.kids[0]);
      if (n.name == "not") return Value::Bool(!v.Truthy());
      if (v.is_float()) return Value::Float(n.name == "-" ? -v.f() : v.f());
      if (v.is_int() || v.is_bool()) {
        const int64_t x = IntOf(v);
        if (n.name == "+") return Value::Int(x);
        if (x == INT64_MIN) Throw("integer overflow");
        return Value::Int(-x);
      }
      Throw(std::string("bad operand type for unary ") + n.name + ": '" + v.TypeName() + "'");
    }
    case K::kBinary: {
      if (n.name == "and") {
        Value a = Eval(*n.kids[0]);
        return a.Truthy() ? Eval(*n.kids[1]) : a;
      }
      if (n.name == "or") {
        Value a = Eval(*n.kids[0]);
        return a.Truthy() ? a : Eval(*n.kids[1]);
      }
      const Value a = Eval(*n.kids[0]);
      const Value b = Eval(*n.kids[1]);
      return Binary(n, n.name, a, b);
    }
    case K::kCompare: {
      Value left = Eval(*n.kids[0]);
      for (size_t k = 0; k < n.ops.size(); ++k) {
        Value right = Eval(*n.kids[k + 1]);
        if (!CompareOp(n, n.ops[k], left, right)) return Value::Bool(false);
        left = std::move(right);
      }
      return Value::Bool(true);
    }
    case K::kCondExpr:
      if (Eval(*n.kids[1]).Truthy()) return Eval(*n.kids[0]);
      return n.kids[2] ? Eval(*n.kids[2]) : Value();
    case K::kList:
    case K::kTuple: {
      ValueList items;
      for (const NodePtr& k : n.kids) items.push_back(Eval(*k));
      return n.kind == K::kTuple ? Value::Tuple(std::move(items)) : Value::List(std::move(items));
    }
    case K::kDict: {
      Dict d;
      for (size_t k = 0; k + 1 < n.kids.size(); k += 2) {
        Value key = Eval(*n.kids[k]);
        if (key.is_list() || key.is_dict())
          Throw("unhashable type: '" + std::string(key.TypeName()) + "'");
        d.Set(key, Eval(*n.kids[k + 1]));
      }
      return Value::MakeDict(std::move(d));
    }
    default:
      Throw("internal error: a statement where an expression belongs");
  }
}

}  // namespace stip::jinja
