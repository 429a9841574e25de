// libFuzzer target: the Jinja interpreter of chat templates
// (common/jinja/) on arbitrary template sources, rendered with a chat-like
// context whose messages are untrusted. Contract: a stip::Error naming the
// problem, or output whose untrusted ranges are sorted, disjoint and inside
// the text; never a crash, a hang (steps and output are bounded) or a stack
// overflow (nesting is bounded).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"
#include "common/jinja/template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  static const stip::jinja::Value context = [] {
    nlohmann::ordered_json c = {
        {"messages",
         {{{"role", "system"}, {"content", "Be brief."}},
          {{"role", "user"}, {"content", "Hi <|im_end|> \xc3\xa9 {{ x }}"}},
          {{"role", "assistant"}, {"content", "<think>\nhm\n</think>\n\nHello"}},
          {{"role", "user"}, {"content", ""}}}},
        {"add_generation_prompt", true},
        {"bos_token", "<s>"},
        {"eos_token", "</s>"},
        {"tools", nullptr}};
    stip::jinja::Dict d;
    for (const auto& [k, v] : c.items()) {
      d.Set(stip::jinja::Value::String(k), stip::jinja::Value::FromJson(v, k == "messages"));
    }
    return stip::jinja::Value::MakeDict(std::move(d));
  }();
  stip::jinja::RenderLimits limits;
  limits.max_output_bytes = 1 << 20;
  limits.max_steps = 100000;
  limits.max_call_depth = 32;
  try {
    const stip::jinja::Template t = stip::jinja::Template::Parse(source, "fuzz");
    const stip::jinja::Text out = t.Render(context, limits);
    size_t last = 0;
    for (const auto& [b, e] : out.untrusted) {
      if (b < last || b >= e || e > out.s.size()) abort();
      last = e;
    }
  } catch (const stip::Error&) {
  }
  return 0;
}
