// A focused Jinja interpreter for chat templates (no C++ Jinja library is
// packaged in Debian). It renders as Jinja2 renders with the environment
// transformers' apply_chat_template builds: ImmutableSandboxedEnvironment
// with trim_blocks and lstrip_blocks, the loopcontrols extension, and the
// globals/filters transformers adds (raise_exception, strftime_now, and a
// tojson that is json.dumps with ensure_ascii=False).
//
//   jinja::Template t = jinja::Template::Parse(source, "chat_template.jinja");
//   jinja::Text out = t.Render(context);   // context: a dict Value
//
// The output is a Text: the rendered string and the byte ranges of it that
// came from untrusted data in the context (Value::FromJson(..., true)), so
// that a caller can encode those as plain text (common/chat/).
//
// Errors (stip::Error, kInvalidArgument) name the template, the line and the
// column, for syntax errors and for errors while rendering (an unknown
// filter, a type error, raise_exception). Rendering is bounded: output size,
// macro call depth, evaluation steps and parse nesting (kResourceExhausted
// past a limit), so that a hostile template can neither crash nor hang the
// client.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/jinja/value.h"

namespace stip::jinja {

struct Node;

struct RenderLimits {
  size_t max_output_bytes = 32u << 20;  // also bounds any one string built while rendering
  int max_call_depth = 64;              // macro calls in progress
  uint64_t max_steps = 50'000'000;      // expression evaluations and statements
};

class Template {
 public:
  // Throws stip::Error naming `name`, the line and the column.
  static Template Parse(std::string_view source, std::string name = "template");

  // `context` must be a dict; its entries are the template's variables.
  Text Render(const Value& context, const RenderLimits& limits = {}) const;

  const std::string& name() const { return name_; }

 private:
  std::shared_ptr<const Node> root_;
  std::string name_;
};

}  // namespace stip::jinja
