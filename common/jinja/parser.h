// The Jinja parser: tokens -> syntax tree. Jinja2's grammar and operator
// precedence (the subset chat templates use, which is most of it):
//
//   statements  if/elif/else, for (with `if` filter, `else`, `recursive`
//               unsupported), set (name, tuple, ns.attr, block set), macro,
//               call-less filter blocks, break/continue, raw, generation
//   expressions inline if, or, and, not, comparisons (chained; in, not in),
//               + -, ~, * / // %, **, unary - +, filters (|), tests (is),
//               attribute, subscript, slice, call (positional and keyword),
//               list, tuple, dict, string, number, true/false/none literals
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/jinja/value.h"

namespace stip::jinja {

struct Node;
using NodePtr = std::unique_ptr<Node>;

struct Node {
  enum class Kind {
    // expressions
    kLiteral,   // literal
    kName,      // name
    kGetattr,   // kids[0].name
    kGetitem,   // kids[0][kids[1]]
    kSlice,     // kids[0][kids[1]:kids[2]:kids[3]] (null kids: omitted)
    kCall,      // kids[0](kids[1..]); arg_names parallel to the arguments ("" positional)
    kFilter,    // kids[0] | name(kids[1..])
    kTest,      // kids[0] is [not] name(kids[1..]); negated
    kUnary,     // name in {"-", "+", "not"}
    kBinary,    // kids[0] name kids[1]; name: an operator, "and", "or"
    kCompare,   // kids[0] ops[0] kids[1] ops[1] kids[2] ...
    kCondExpr,  // kids[0] if kids[1] else kids[2] (kids[2] may be null)
    kList,
    kTuple,
    kDict,  // kids: key, value, key, value...
    // statements
    kBody,         // kids
    kData,         // literal text
    kOutput,       // {{ kids[0] }}
    kIf,           // if kids[0]: kids[1] else kids[2] (null; kIf for elif)
    kFor,          // for targets in kids[0] [if kids[3]]: kids[1] else kids[2]
    kSet,          // targets (or name.attr) = kids[0]
    kSetBlock,     // targets = render(kids[0]) | filters kids[1..] (kFilter chain on null)
    kMacro,        // macro name(targets with defaults kids[1..]) body kids[0]
    kFilterBlock,  // filter chain kids[1] applied to render(kids[0])
    kBreak,
    kContinue,
  };

  Kind kind;
  int line = 0, column = 0;
  std::string name;
  std::string attr;  // kSet on a namespace attribute
  Value literal;
  bool negated = false;
  std::vector<NodePtr> kids;
  std::vector<std::string> targets;    // for/set/macro parameter names
  std::vector<std::string> arg_names;  // kCall/kFilter/kTest keyword names, kMacro defaults
  std::vector<std::string> ops;        // kCompare

  Node(Kind k, int l, int c) : kind(k), line(l), column(c) {}
};

// Parses a whole template. Throws stip::Error (kInvalidArgument) naming
// `name`, the line and the column. `max_depth` bounds the nesting of
// expressions and blocks (deeper input is refused, not a stack overflow).
NodePtr Parse(std::string_view source, const std::string& name, int max_depth = 200);

}  // namespace stip::jinja
