// The Hugging Face reference fixtures, one directory per model type under
// tests/data/hf-reference, found on disk rather than listed: a new family is
// its arch file (common/arch/) plus a fixture, and every test that iterates
// here covers it. Torch-free.
#pragma once

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/arch/architecture.h"
#include "common/error.h"

namespace stip::test {

struct Fixture {
  std::string name;  // the directory name (= its model_type)
  std::string dir;
  ModelConfig config;
};

// Every fixture whose model_type is registered (Architectures()), by name.
inline const std::vector<Fixture>& AllFixtures() {
  static const std::vector<Fixture> kAll = [] {
    std::vector<Fixture> out;
    const std::filesystem::path root = std::filesystem::path(STIP_TEST_DATA_DIR) / "hf-reference";
    for (const auto& entry : std::filesystem::directory_iterator(root)) {
      if (!entry.is_directory()) continue;
      const std::string dir = entry.path().string();
      try {
        out.push_back({entry.path().filename().string(), dir, LoadModelConfig(dir)});
      } catch (const Error& e) {
        if (e.code() != ErrorCode::kUnimplemented) throw;  // a family not (yet) registered
      }
    }
    std::sort(out.begin(), out.end(),
              [](const Fixture& a, const Fixture& b) { return a.name < b.name; });
    return out;
  }();
  return kAll;
}

inline std::vector<std::string> FixtureNames(bool causal, bool encoders) {
  std::vector<std::string> names;
  for (const Fixture& f : AllFixtures()) {
    if (f.config.encoder ? encoders : causal) names.push_back(f.name);
  }
  return names;
}
inline std::vector<std::string> CausalFixtures() { return FixtureNames(true, false); }
inline std::vector<std::string> EncoderFixtures() { return FixtureNames(false, true); }

inline const Fixture& GetFixture(const std::string& name) {
  for (const Fixture& f : AllFixtures()) {
    if (f.name == name) return f;
  }
  throw std::runtime_error("no fixture " + name);
}

// A gtest parameter name from a fixture or model name ("kjv-gpt2" -> "kjv_gpt2").
struct ParamName {
  template <typename Info>
  std::string operator()(const Info& info) const {
    std::string n = info.param;
    std::replace(n.begin(), n.end(), '-', '_');
    return n;
  }
};

}  // namespace stip::test
