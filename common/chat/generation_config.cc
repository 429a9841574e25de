#include "common/chat/generation_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "common/engine/sampling_options.h"
#include "common/error.h"
#include "common/util/files.h"

namespace stip {

namespace {

std::optional<double> Number(const nlohmann::json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) throw InvalidArgument(source + ": \"" + key + "\" must be a number");
  const double v = it->get<double>();
  if (!std::isfinite(v)) throw InvalidArgument(source + ": \"" + key + "\" must be finite");
  return v;
}

}  // namespace

GenerationConfig ParseGenerationConfig(const std::string& json_text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(source + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw InvalidArgument(source + ": not a JSON object");
  GenerationConfig c;
  c.present = true;
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    auto add = [&](const nlohmann::json& v) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0) {
        throw InvalidArgument(source + ": \"eos_token_id\" must be a token id or a list of ids");
      }
      const int64_t id = v.get<int64_t>();
      for (int64_t e : c.eos_token_ids) {
        if (e == id) return;
      }
      c.eos_token_ids.push_back(id);
    };
    if (it->is_array()) {
      for (const auto& v : *it) add(v);
    } else {
      add(*it);
    }
  }
  if (auto it = j.find("do_sample"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) throw InvalidArgument(source + ": \"do_sample\" must be true or false");
    c.do_sample = it->get<bool>();
  }
  c.temperature = Number(j, "temperature", source);
  c.top_p = Number(j, "top_p", source);
  c.repetition_penalty = Number(j, "repetition_penalty", source);
  if (auto v = Number(j, "top_k", source)) {
    if (*v < 0 || *v != std::floor(*v)) {
      throw InvalidArgument(source + ": \"top_k\" must be an integer >= 0");
    }
    c.top_k = static_cast<int64_t>(*v);
  }
  if (c.temperature && *c.temperature < 0) {
    throw InvalidArgument(source + ": \"temperature\" must be >= 0");
  }
  if (c.top_p && !(*c.top_p > 0 && *c.top_p <= 1)) {
    throw InvalidArgument(source + ": \"top_p\" must be in (0, 1]");
  }
  if (c.repetition_penalty && !(*c.repetition_penalty > 0)) {
    throw InvalidArgument(source + ": \"repetition_penalty\" must be > 0");
  }
  return c;
}

GenerationConfig LoadGenerationConfig(const std::string& dir) {
  const std::string path = JoinPath(dir, "generation_config.json");
  if (!PathExists(path)) return GenerationConfig();
  return ParseGenerationConfig(ReadFile(path), path);
}

void ApplyGenerationConfig(const GenerationConfig& config, const UserSampling& user,
                           SamplingOptions* s) {
  if (!config.present) return;
  if (!user.repetition_penalty && config.repetition_penalty) {
    s->repetition_penalty = *config.repetition_penalty;
  }
  if (user.greedy) return;
  const bool user_samples = user.temperature || user.top_k || user.top_p || user.seed;
  const bool sample = config.do_sample.value_or(false) || user_samples;
  if (!sample) {
    s->greedy = true;
    return;
  }
  if (!user.temperature) s->temperature = config.temperature.value_or(1.0);
  if (!user.top_k) s->top_k = config.top_k.value_or(config.do_sample.value_or(false) ? 50 : 0);
  if (!user.top_p) s->top_p = config.top_p.value_or(1.0);
}

}  // namespace stip
