#include "common/jinja/template.h"

#include "common/error.h"
#include "common/jinja/evaluator.h"
#include "common/jinja/parser.h"

namespace stip::jinja {

Template Template::Parse(std::string_view source, std::string name) {
  Template t;
  t.name_ = std::move(name);
  t.root_ = std::shared_ptr<const Node>(jinja::Parse(source, t.name_).release());
  return t;
}

Text Template::Render(const Value& context, const RenderLimits& limits) const {
  if (!root_) throw FailedPrecondition("rendering a template that was not parsed");
  Evaluator ev(name_, limits, context);
  return ev.Render(*root_);
}

}  // namespace stip::jinja
