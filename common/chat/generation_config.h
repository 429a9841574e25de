// generation_config.json: the generation defaults a checkpoint ships
// (Hugging Face's GenerationConfig), read the way transformers reads them.
//
//   eos_token_id        an id or a list of ids; every one ends an answer
//                       (Llama-3 Instruct: <|end_of_text|> and <|eot_id|>)
//   do_sample           false (transformers' default): greedy decoding
//   temperature, top_k, top_p, repetition_penalty
//                       used when sampling; when do_sample is true and a
//                       value is absent, transformers' default applies
//                       (temperature 1, top_k 50, top_p 1)
//
// A user's explicit setting always wins (ApplyGenerationConfig). Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace stip {

struct SamplingOptions;

struct GenerationConfig {
  bool present = false;  // the file exists
  std::vector<int64_t> eos_token_ids;
  std::optional<bool> do_sample;
  std::optional<double> temperature;
  std::optional<int64_t> top_k;
  std::optional<double> top_p;
  std::optional<double> repetition_penalty;
};

// DIR/generation_config.json; an absent file gives an empty config. Throws
// kInvalidArgument naming the file and the field for malformed values.
GenerationConfig LoadGenerationConfig(const std::string& dir);
GenerationConfig ParseGenerationConfig(const std::string& json_text, const std::string& source);

// Which sampling settings the user gave explicitly.
struct UserSampling {
  bool greedy = false;
  bool seed = false;  // a seed asks for (reproducible) sampling
  bool temperature = false;
  bool top_k = false;
  bool top_p = false;
  bool repetition_penalty = false;
};

// Fills what the user left unset from `config`: with do_sample false (or
// absent while the file says nothing else) and no sampling setting of the
// user's, greedy; with do_sample true, the config's values (or
// transformers' defaults). A user-set value is never changed; a user who set
// temperature, top_k, top_p or a seed samples even where the config says
// do_sample false (they asked for it). The repetition penalty applies
// either way. Without a config file nothing changes.
void ApplyGenerationConfig(const GenerationConfig& config, const UserSampling& user,
                           SamplingOptions* sampling);

}  // namespace stip
