#include "common/jinja/parser.h"

#include <cerrno>
#include <cstdlib>

#include "common/error.h"
#include "common/jinja/lexer.h"

namespace stip::jinja {

namespace {

using K = Node::Kind;

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& name, int max_depth)
      : toks_(std::move(tokens)), name_(name), max_depth_(max_depth) {}

  NodePtr Template() {
    std::vector<std::string> end_at;
    NodePtr body = Body({}, &end_at);
    if (!end_at.empty()) Fail(Cur(), "unexpected '" + end_at[0] + "'");
    return body;
  }

 private:
  struct DepthGuard {
    Parser* p;
    explicit DepthGuard(Parser* parser, const Token& t) : p(parser) {
      if (++p->depth_ > p->max_depth_) {
        p->Fail(t, "template nested too deeply (more than " + std::to_string(p->max_depth_) +
                       " levels)");
      }
    }
    ~DepthGuard() { --p->depth_; }
  };

  [[noreturn]] void Fail(const Token& t, const std::string& what) const {
    throw InvalidArgument(Where(name_, t.line, t.column) + ": " + what);
  }

  const Token& Cur() const { return toks_[pos_]; }
  const Token& Peek(size_t k = 1) const { return toks_[std::min(pos_ + k, toks_.size() - 1)]; }
  const Token& Next() {
    const Token& t = toks_[pos_];
    if (pos_ + 1 < toks_.size()) ++pos_;
    return t;
  }
  bool IsOp(const char* op) const { return Cur().type == TokenType::kOp && Cur().value == op; }
  bool IsName(const char* n) const { return Cur().type == TokenType::kName && Cur().value == n; }
  void ExpectOp(const char* op) {
    if (!IsOp(op)) Fail(Cur(), std::string("expected '") + op + "', got " + Describe(Cur()));
    Next();
  }
  void ExpectBlockEnd() {
    if (Cur().type != TokenType::kBlockEnd) {
      Fail(Cur(), "expected the end of the statement ('%}'), got " + Describe(Cur()));
    }
    Next();
  }
  std::string ExpectName() {
    if (Cur().type != TokenType::kName) Fail(Cur(), "expected a name, got " + Describe(Cur()));
    return Next().value;
  }
  static std::string Describe(const Token& t) {
    switch (t.type) {
      case TokenType::kData:
        return "template text";
      case TokenType::kVarBegin:
        return "'{{'";
      case TokenType::kVarEnd:
        return "'}}'";
      case TokenType::kBlockBegin:
        return "'{%'";
      case TokenType::kBlockEnd:
        return "'%}'";
      case TokenType::kEof:
        return "the end of the template";
      case TokenType::kString:
        return "a string";
      default:
        return "'" + t.value + "'";
    }
  }
  NodePtr Make(K kind, const Token& t) { return std::make_unique<Node>(kind, t.line, t.column); }

  // Statements until one of `end_tags` (left in *end_at with the block-begin
  // consumed and the tag name consumed) or the end of the template.
  NodePtr Body(const std::vector<std::string>& end_tags, std::vector<std::string>* end_at) {
    DepthGuard guard(this, Cur());
    NodePtr body = Make(K::kBody, Cur());
    while (true) {
      const Token& t = Cur();
      if (t.type == TokenType::kEof) {
        if (!end_tags.empty()) {
          Fail(t, "unexpected end of the template: expected '" + end_tags[0] + "'");
        }
        return body;
      }
      if (t.type == TokenType::kData) {
        NodePtr d = Make(K::kData, t);
        d->name = t.value;
        body->kids.push_back(std::move(d));
        Next();
        continue;
      }
      if (t.type == TokenType::kVarBegin) {
        Next();
        NodePtr out = Make(K::kOutput, t);
        out->kids.push_back(Expression());
        if (Cur().type != TokenType::kVarEnd) {
          Fail(Cur(), "expected '}}', got " + Describe(Cur()));
        }
        Next();
        body->kids.push_back(std::move(out));
        continue;
      }
      if (t.type != TokenType::kBlockBegin) Fail(t, "unexpected " + Describe(t));
      const Token& tag = Peek();
      if (tag.type != TokenType::kName) Fail(tag, "expected a statement name");
      for (const std::string& e : end_tags) {
        if (tag.value == e) {
          Next();
          Next();
          end_at->assign(1, e);
          return body;
        }
      }
      Next();
      body->kids.push_back(Statement());
    }
  }

  NodePtr Statement() {
    const Token& tag = Next();
    const std::string& n = tag.value;
    if (n == "if") return If(tag);
    if (n == "for") return For(tag);
    if (n == "set") return Set(tag);
    if (n == "macro") return Macro(tag);
    if (n == "filter") return FilterBlock(tag);
    if (n == "break" || n == "continue") {
      if (loop_depth_ == 0) Fail(tag, "'" + n + "' outside a loop");
      ExpectBlockEnd();
      return Make(n == "break" ? K::kBreak : K::kContinue, tag);
    }
    if (n == "generation") {  // transformers' AssistantTracker: renders its body
      ExpectBlockEnd();
      std::vector<std::string> end_at;
      NodePtr body = Body({"endgeneration"}, &end_at);
      ExpectBlockEnd();
      return body;
    }
    Fail(tag, "unknown or unsupported statement '" + n + "'");
  }

  NodePtr If(const Token& tag) {
    NodePtr node = Make(K::kIf, tag);
    node->kids.push_back(Expression());
    ExpectBlockEnd();
    std::vector<std::string> end_at;
    node->kids.push_back(Body({"elif", "else", "endif"}, &end_at));
    if (end_at[0] == "elif") {
      node->kids.push_back(If(toks_[pos_ - 1]));
      return node;  // the nested If consumed the endif
    }
    if (end_at[0] == "else") {
      ExpectBlockEnd();
      node->kids.push_back(Body({"endif"}, &end_at));
    } else {
      node->kids.push_back(nullptr);
    }
    ExpectBlockEnd();
    return node;
  }

  NodePtr For(const Token& tag) {
    NodePtr node = Make(K::kFor, tag);
    node->targets.push_back(ExpectName());
    while (IsOp(",")) {
      Next();
      node->targets.push_back(ExpectName());
    }
    if (!IsName("in")) Fail(Cur(), "expected 'in' in the for statement");
    Next();
    node->kids.push_back(Expression(/*allow_cond=*/false));
    NodePtr filter;
    if (IsName("if")) {
      Next();
      filter = Expression();
    }
    if (IsName("recursive")) Fail(Cur(), "recursive loops are not supported");
    ExpectBlockEnd();
    ++loop_depth_;
    std::vector<std::string> end_at;
    NodePtr body = Body({"else", "endfor"}, &end_at);
    --loop_depth_;
    node->kids.push_back(std::move(body));
    if (end_at[0] == "else") {
      ExpectBlockEnd();
      node->kids.push_back(Body({"endfor"}, &end_at));
    } else {
      node->kids.push_back(nullptr);
    }
    node->kids.push_back(std::move(filter));
    ExpectBlockEnd();
    return node;
  }

  NodePtr Set(const Token& tag) {
    const std::string first = ExpectName();
    if (IsOp(".")) {
      Next();
      NodePtr node = Make(K::kSet, tag);
      node->targets.push_back(first);
      node->attr = ExpectName();
      ExpectOp("=");
      node->kids.push_back(TupleOrExpression());
      ExpectBlockEnd();
      return node;
    }
    std::vector<std::string> targets{first};
    while (IsOp(",")) {
      Next();
      targets.push_back(ExpectName());
    }
    if (IsOp("=")) {
      Next();
      NodePtr node = Make(K::kSet, tag);
      node->targets = std::move(targets);
      node->kids.push_back(TupleOrExpression());
      ExpectBlockEnd();
      return node;
    }
    // Block set: {% set x %}...{% endset %}, optionally {% set x | filter %}.
    if (targets.size() != 1) Fail(Cur(), "a block set assigns one name");
    NodePtr node = Make(K::kSetBlock, tag);
    node->targets = std::move(targets);
    NodePtr chain;
    while (IsOp("|")) chain = FilterOn(std::move(chain));
    ExpectBlockEnd();
    std::vector<std::string> end_at;
    node->kids.push_back(Body({"endset"}, &end_at));
    ExpectBlockEnd();
    node->kids.push_back(std::move(chain));
    return node;
  }

  NodePtr Macro(const Token& tag) {
    NodePtr node = Make(K::kMacro, tag);
    node->name = ExpectName();
    ExpectOp("(");
    std::vector<NodePtr> defaults;
    while (!IsOp(")")) {
      node->targets.push_back(ExpectName());
      if (IsOp("=")) {
        Next();
        defaults.push_back(Expression());
      } else {
        if (!defaults.empty() && defaults.back()) {
          Fail(Cur(), "a macro parameter without a default follows one with a default");
        }
        defaults.push_back(nullptr);
      }
      if (!IsOp(",")) break;
      Next();
    }
    ExpectOp(")");
    ExpectBlockEnd();
    const int saved = loop_depth_;
    loop_depth_ = 0;
    std::vector<std::string> end_at;
    node->kids.push_back(Body({"endmacro"}, &end_at));
    loop_depth_ = saved;
    if (Cur().type == TokenType::kName && Cur().value == node->name) Next();
    ExpectBlockEnd();
    for (auto& d : defaults) node->kids.push_back(std::move(d));
    return node;
  }

  NodePtr FilterBlock(const Token& tag) {
    NodePtr node = Make(K::kFilterBlock, tag);
    NodePtr chain;
    do {
      chain = FilterOn(std::move(chain), /*leading_pipe=*/false);
    } while (IsOp("|"));
    ExpectBlockEnd();
    std::vector<std::string> end_at;
    node->kids.push_back(Body({"endfilter"}, &end_at));
    ExpectBlockEnd();
    node->kids.push_back(std::move(chain));
    return node;
  }

  // ---- expressions ----

  NodePtr TupleOrExpression() {
    const Token& t = Cur();
    NodePtr e = Expression();
    if (!IsOp(",")) return e;
    NodePtr tuple = Make(K::kTuple, t);
    tuple->kids.push_back(std::move(e));
    while (IsOp(",")) {
      Next();
      if (Cur().type == TokenType::kBlockEnd || Cur().type == TokenType::kVarEnd) break;
      tuple->kids.push_back(Expression());
    }
    return tuple;
  }

  NodePtr Expression(bool allow_cond = true) {
    DepthGuard guard(this, Cur());
    NodePtr e = Or();
    if (!allow_cond) return e;
    while (IsName("if")) {
      const Token& t = Next();
      NodePtr cond = Make(K::kCondExpr, t);
      NodePtr test = Or();
      NodePtr otherwise;
      if (IsName("else")) {
        Next();
        otherwise = Expression();
      }
      cond->kids.push_back(std::move(e));
      cond->kids.push_back(std::move(test));
      cond->kids.push_back(std::move(otherwise));
      e = std::move(cond);
    }
    return e;
  }

  NodePtr Binary(NodePtr left, const Token& t, const std::string& op, NodePtr right) {
    NodePtr n = Make(K::kBinary, t);
    n->name = op;
    n->kids.push_back(std::move(left));
    n->kids.push_back(std::move(right));
    return n;
  }

  NodePtr Or() {
    NodePtr e = And();
    while (IsName("or")) {
      const Token& t = Next();
      e = Binary(std::move(e), t, "or", And());
    }
    return e;
  }
  NodePtr And() {
    NodePtr e = Not();
    while (IsName("and")) {
      const Token& t = Next();
      e = Binary(std::move(e), t, "and", Not());
    }
    return e;
  }
  NodePtr Not() {
    if (IsName("not")) {
      DepthGuard guard(this, Cur());
      const Token& t = Next();
      NodePtr n = Make(K::kUnary, t);
      n->name = "not";
      n->kids.push_back(Not());
      return n;
    }
    return Compare();
  }
  NodePtr Compare() {
    const Token& t = Cur();
    NodePtr first = Math1();
    NodePtr cmp;
    while (true) {
      std::string op;
      if (Cur().type == TokenType::kOp &&
          (Cur().value == "==" || Cur().value == "!=" || Cur().value == "<" ||
           Cur().value == "<=" || Cur().value == ">" || Cur().value == ">=")) {
        op = Next().value;
      } else if (IsName("in")) {
        Next();
        op = "in";
      } else if (IsName("not") && Peek().type == TokenType::kName && Peek().value == "in") {
        Next();
        Next();
        op = "notin";
      } else {
        break;
      }
      if (!cmp) {
        cmp = Make(K::kCompare, t);
        cmp->kids.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->kids.push_back(Math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }
  NodePtr Math1() {
    NodePtr e = Concat();
    while (IsOp("+") || IsOp("-")) {
      const Token& t = Next();
      e = Binary(std::move(e), t, t.value, Concat());
    }
    return e;
  }
  NodePtr Concat() {
    NodePtr e = Math2();
    while (IsOp("~")) {
      const Token& t = Next();
      e = Binary(std::move(e), t, "~", Math2());
    }
    return e;
  }
  NodePtr Math2() {
    NodePtr e = Pow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token& t = Next();
      e = Binary(std::move(e), t, t.value, Pow());
    }
    return e;
  }
  NodePtr Pow() {
    NodePtr e = Unary(true);
    while (IsOp("**")) {
      const Token& t = Next();
      e = Binary(std::move(e), t, "**", Unary(true));
    }
    return e;
  }
  NodePtr Unary(bool with_filter) {
    DepthGuard guard(this, Cur());
    NodePtr e;
    if (IsOp("-") || IsOp("+")) {
      const Token& t = Next();
      e = Make(K::kUnary, t);
      e->name = t.value;
      e->kids.push_back(Unary(false));
    } else {
      e = Primary();
    }
    e = Postfix(std::move(e));
    if (with_filter) e = FilterExpr(std::move(e));
    return e;
  }

  NodePtr Primary() {
    const Token& t = Cur();
    switch (t.type) {
      case TokenType::kName: {
        Next();
        NodePtr n = Make(K::kLiteral, t);
        if (t.value == "true" || t.value == "True") {
          n->literal = Value::Bool(true);
        } else if (t.value == "false" || t.value == "False") {
          n->literal = Value::Bool(false);
        } else if (t.value == "none" || t.value == "None") {
          n->literal = Value::None();
        } else {
          n = Make(K::kName, t);
          n->name = t.value;
        }
        return n;
      }
      case TokenType::kString: {
        std::string s;
        while (Cur().type == TokenType::kString) s += Next().value;
        NodePtr n = Make(K::kLiteral, t);
        n->literal = Value::String(std::move(s));
        return n;
      }
      case TokenType::kInt: {
        Next();
        NodePtr n = Make(K::kLiteral, t);
        errno = 0;
        const long long v = std::strtoll(t.value.c_str(), nullptr, 10);
        if (errno == ERANGE) Fail(t, "integer literal out of range");
        n->literal = Value::Int(v);
        return n;
      }
      case TokenType::kFloat: {
        Next();
        NodePtr n = Make(K::kLiteral, t);
        n->literal = Value::Float(std::strtod(t.value.c_str(), nullptr));
        return n;
      }
      case TokenType::kOp:
        if (t.value == "(") {
          Next();
          if (IsOp(")")) {
            Next();
            return Make(K::kTuple, t);
          }
          NodePtr e = Expression();
          if (IsOp(",")) {
            NodePtr tuple = Make(K::kTuple, t);
            tuple->kids.push_back(std::move(e));
            while (IsOp(",")) {
              Next();
              if (IsOp(")")) break;
              tuple->kids.push_back(Expression());
            }
            e = std::move(tuple);
          }
          ExpectOp(")");
          return e;
        }
        if (t.value == "[") {
          Next();
          NodePtr list = Make(K::kList, t);
          while (!IsOp("]")) {
            list->kids.push_back(Expression());
            if (!IsOp(",")) break;
            Next();
          }
          ExpectOp("]");
          return list;
        }
        if (t.value == "{") {
          Next();
          NodePtr dict = Make(K::kDict, t);
          while (!IsOp("}")) {
            dict->kids.push_back(Expression());
            ExpectOp(":");
            dict->kids.push_back(Expression());
            if (!IsOp(",")) break;
            Next();
          }
          ExpectOp("}");
          return dict;
        }
        break;
      default:
        break;
    }
    Fail(t, "expected an expression, got " + Describe(t));
  }

  NodePtr Postfix(NodePtr e) {
    while (true) {
      const Token& t = Cur();
      if (IsOp(".")) {
        Next();
        NodePtr n = Make(K::kGetattr, t);
        if (Cur().type == TokenType::kInt) {  // foo.0 == foo[0]
          NodePtr idx = Make(K::kLiteral, Cur());
          idx->literal = Value::Int(std::strtoll(Next().value.c_str(), nullptr, 10));
          n = Make(K::kGetitem, t);
          n->kids.push_back(std::move(e));
          n->kids.push_back(std::move(idx));
        } else {
          n->name = ExpectName();
          n->kids.push_back(std::move(e));
        }
        e = std::move(n);
      } else if (IsOp("[")) {
        Next();
        e = Subscript(std::move(e), t);
        ExpectOp("]");
      } else if (IsOp("(")) {
        e = Call(std::move(e));
      } else {
        return e;
      }
    }
  }

  NodePtr Subscript(NodePtr target, const Token& t) {
    NodePtr parts[3];
    bool is_slice = false;
    if (!IsOp(":")) parts[0] = Expression();
    if (IsOp(":")) {
      is_slice = true;
      Next();
      if (!IsOp("]") && !IsOp(":")) parts[1] = Expression();
      if (IsOp(":")) {
        Next();
        if (!IsOp("]")) parts[2] = Expression();
      }
    }
    if (!is_slice) {
      if (IsOp(",")) Fail(Cur(), "tuple subscripts are not supported");
      NodePtr n = Make(K::kGetitem, t);
      n->kids.push_back(std::move(target));
      n->kids.push_back(std::move(parts[0]));
      return n;
    }
    NodePtr n = Make(K::kSlice, t);
    n->kids.push_back(std::move(target));
    for (auto& p : parts) n->kids.push_back(std::move(p));
    return n;
  }

  // Arguments "(a, b, key=c)" into n->kids (after any already there) and n->arg_names.
  void Arguments(Node* n) {
    ExpectOp("(");
    while (!IsOp(")")) {
      if (Cur().type == TokenType::kName && Peek().type == TokenType::kOp && Peek().value == "=") {
        n->arg_names.push_back(Next().value);
        Next();
      } else {
        if (IsOp("*") || IsOp("**")) Fail(Cur(), "*args and **kwargs are not supported");
        for (const std::string& a : n->arg_names) {
          if (!a.empty()) Fail(Cur(), "a positional argument follows a keyword argument");
        }
        n->arg_names.push_back("");
      }
      n->kids.push_back(Expression());
      if (!IsOp(",")) break;
      Next();
    }
    ExpectOp(")");
  }

  NodePtr Call(NodePtr callee) {
    NodePtr n = Make(K::kCall, Cur());
    n->kids.push_back(std::move(callee));
    Arguments(n.get());
    return n;
  }

  // One filter "| name(args)" applied to `value` (null: a filter chain head
  // for block filters).
  NodePtr FilterOn(NodePtr value, bool leading_pipe = true) {
    if (leading_pipe) ExpectOp("|");
    const Token& t = Cur();
    NodePtr n = Make(K::kFilter, t);
    n->name = ExpectName();
    while (IsOp(".")) {  // dotted filter names
      Next();
      n->name += "." + ExpectName();
    }
    n->kids.push_back(std::move(value));
    if (IsOp("(")) Arguments(n.get());
    return n;
  }

  NodePtr FilterExpr(NodePtr e) {
    while (true) {
      if (IsOp("|")) {
        e = FilterOn(std::move(e));
      } else if (IsName("is")) {
        const Token& t = Next();
        NodePtr n = Make(K::kTest, t);
        if (IsName("not")) {
          Next();
          n->negated = true;
        }
        n->name = ExpectName();
        n->kids.push_back(std::move(e));
        if (IsOp("(")) {
          Arguments(n.get());
        } else if (Cur().type == TokenType::kString || Cur().type == TokenType::kInt ||
                   Cur().type == TokenType::kFloat || IsOp("[") || IsOp("{") ||
                   (Cur().type == TokenType::kName &&
                    !(IsName("else") || IsName("or") || IsName("and") || IsName("if") ||
                      IsName("in") || IsName("is") || IsName("not")))) {
          // "is divisibleby 3", "is sameas false": one argument without parentheses.
          n->arg_names.push_back("");
          n->kids.push_back(Postfix(Primary()));
        }
        e = std::move(n);
      } else if (IsOp("(")) {
        e = Call(std::move(e));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> toks_;
  const std::string& name_;
  int max_depth_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

NodePtr Parse(std::string_view source, const std::string& name, int max_depth) {
  return Parser(Tokenize(source, name), name, max_depth).Template();
}

}  // namespace stip::jinja
