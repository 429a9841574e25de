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

namespace stip {
struct ModelConfig;
// Shared by the rotary families: rope_parameters (transformers 5) or
// rope_theta + rope_scaling (older); throws kUnimplemented for rope types the
// engine does not implement.
void ParseRope(const JsonConfig& cfg, double default_theta, ModelConfig* out);
}  // namespace stip
