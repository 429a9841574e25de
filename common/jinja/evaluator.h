// The Jinja evaluator (internal to common/jinja/): walks the syntax tree of
// parser.h with Python's semantics, writing into a Text. The built-in
// filters, tests, globals and methods live in builtins.cc.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/jinja/parser.h"
#include "common/jinja/template.h"
#include "common/jinja/value.h"

namespace stip::jinja {

// Thrown by built-ins without a location; the evaluator adds the template
// line and column of the expression that called them.
struct RuntimeError {
  std::string message;
  bool resource = false;  // a limit was hit (kResourceExhausted)
};
[[noreturn]] void Throw(const std::string& message);

class Evaluator {
 public:
  Evaluator(const std::string& name, const RenderLimits& limits, const Value& context);

  Text Render(const Node& root);

  const RenderLimits& limits() const { return limits_; }
  // Throws a RuntimeError if `bytes` exceeds the output limit.
  void CheckSize(size_t bytes) const;

  // Filters and tests by name (builtins.cc). `args` excludes the value.
  Value Filter(const std::string& name, const Value& value, const CallArgs& args);
  bool Test(const std::string& name, const Value& value, const CallArgs& args);
  Value GetAttr(const Value& obj, const std::string& name);
  Value GetItem(const Value& obj, const Value& key);

 private:
  enum class Flow { kNormal, kBreak, kContinue };

  Flow Exec(const Node& n);
  Flow ExecBody(const Node& body);
  Value Eval(const Node& n);
  Value EvalInner(const Node& n);
  void Step();
  [[noreturn]] void Fail(const Node& n, const std::string& message, bool resource = false) const;

  Value Lookup(const std::string& name) const;
  void Assign(const std::string& name, Value v);
  void AssignTargets(const Node& n, const std::vector<std::string>& targets, const Value& v);
  Text Capture(const Node& body);
  void Emit(const Text& t);
  CallArgs EvalArgs(const Node& n, size_t first);
  Value Binary(const Node& n, const std::string& op, const Value& a, const Value& b);
  bool CompareOp(const Node& n, const std::string& op, const Value& a, const Value& b);
  Value DefineMacro(const Node& n);
  void ExecFor(const Node& n);

  const std::string& name_;
  RenderLimits limits_;
  Text out_;
  std::unordered_map<std::string, Value> globals_;
  std::unordered_map<std::string, Value> root_;
  std::vector<std::unordered_map<std::string, Value>> frames_;
  uint64_t steps_ = 0;
  int call_depth_ = 0;
};

// Python's iteration of a value (list items, dict keys, string code points;
// undefined: nothing). Throws a RuntimeError for what is not iterable.
ValueList Iterate(const Value& v);
// Registers the globals (range, dict, namespace, raise_exception, strftime_now).
void AddGlobals(std::unordered_map<std::string, Value>* globals);

}  // namespace stip::jinja
