// Typed, error-reporting access to a config.json object: every failure names
// the file and the key ("config.json: key \"hidden_size\": missing").
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace stip {

class JsonConfig {
 public:
  JsonConfig(const nlohmann::json& json, std::string source)
      : j_(json), source_(std::move(source)) {}

  const nlohmann::json& json() const { return j_; }
  const std::string& source() const { return source_; }

  // Present and not null.
  bool Has(const std::string& key) const;
  // Required keys: throw kInvalidArgument if missing, null or of the wrong type.
  int64_t Int(const std::string& key) const;
  double Number(const std::string& key) const;
  std::string String(const std::string& key) const;
  // Optional keys: `fallback` when missing or null; wrong type still throws.
  int64_t Int(const std::string& key, int64_t fallback) const;
  double Number(const std::string& key, double fallback) const;
  bool Bool(const std::string& key, bool fallback) const;
  std::string String(const std::string& key, const std::string& fallback) const;
  std::optional<int64_t> OptionalInt(const std::string& key) const;
  // An int or a list of ints (eos_token_id); empty when missing or null.
  std::vector<int64_t> IntList(const std::string& key) const;
  // A nested object (e.g. rope_parameters); nullopt when missing or null.
  std::optional<JsonConfig> Object(const std::string& key) const;

  [[noreturn]] void Fail(const std::string& key, const std::string& problem) const;

 private:
  const nlohmann::json& Get(const std::string& key) const;
  nlohmann::json j_;
  std::string source_;
};

}  // namespace stip

#include "common/arch/model_config.h"

namespace stip {
// A Hugging Face activation name (hidden_act, activation_function): gelu
// (exact), gelu_new / gelu_pytorch_tanh / gelu_fast (tanh), relu, silu / swish.
Activation ParseActivation(const JsonConfig& cfg, const std::string& key, const std::string& def);
// A classifier's labels: num_labels and names from id2label ("0": "cat", ...),
// or num_labels alone (default 2, as transformers).
void ParseLabels(const JsonConfig& cfg, ModelConfig* c);
}  // namespace stip
