// libFuzzer target: the config.json reader (common/arch/model_config.cc and
// the per-family parsers) and the tensor table it implies. Contract: a
// stip::Error naming the problem, or a config whose sizes are consistent
// enough to list the checkpoint's tensors; nothing else.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/arch/architecture.h"
#include "common/arch/model_config.h"
#include "common/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  stip::ModelConfig config;
  try {
    config = stip::ParseModelConfig(text, "fuzz/config.json");
  } catch (const stip::Error&) {
    return 0;
  }
  if (config.hidden_size <= 0 || config.num_layers <= 0 || config.vocab_size <= 0) abort();
  try {
    // Bounded: a config may declare a million layers legitimately-looking.
    if (config.num_layers <= 4096 && config.num_experts <= 4096) {
      for (const stip::TensorEntry& e : stip::ExpectedTensors(config)) {
        if (e.name.empty()) abort();
      }
    }
  } catch (const stip::Error&) {
  }
  try {
    stip::PatchConfigJson(text, "{\"stip\": {\"instance_id\": \"x\"}}");
  } catch (const stip::Error&) {
  }
  return 0;
}
