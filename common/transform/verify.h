// `stip-developer verify`: before a model is deployed, prove on it that the
// STIP transformation loses nothing. Draws fresh keys, transforms in memory,
// and compares
//   plain engine      vs the Hugging Face reference (when one is given),
//   STIP path         vs the plain engine (client part -> permute ->
//                     transformed server part -> un-permute),
//   STIP greedy generation with the KV cache vs the reference ids,
// plus the paper's Table 5 figures over random prompts. Encoders (BERT, ViT)
// compare their head's output (or hidden states) the same way, on the
// reference inputs and random ones, batched with padding and alone.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace stip {

struct VerifyOptions {
  std::string reference;    // reference.safetensors; "" = <model>/reference.safetensors if present
  int samples = 8;          // random prompts for the Table 5 figures
  int sample_length = 16;   // tokens per random prompt
  uint64_t seed = 0;        // prompts only (keys always come from the CSPRNG)
  double tolerance = 1e-4;  // max |STIP - plain| in fp32
};

struct VerifyReport {
  std::string arch;
  std::string model_dir;
  std::string reference;
  std::optional<double> max_abs_diff_plain_vs_reference;
  double reference_tolerance = 0;
  double max_abs_diff_stip_vs_plain = 0;
  double max_abs_logit = 0;
  double top1_agreement = 0;
  // Table 5: sum over all positions and logits of |STIP - plain| over the samples.
  double sum_abs_diff = 0;
  int64_t positions_compared = 0;
  std::optional<bool> greedy_match;
  std::optional<bool> greedy_batch_match;
  // Encoders (null for causal models): what the server returns
  // ("token_logits", "sequence_logits", "hidden", "pooled"), and whether every
  // input encoded alone equals the same input in the padded batch.
  std::string encoder_output;
  std::optional<bool> encoder_batch_match;
  int samples = 0;
  double tolerance = 0;
  double seconds = 0;
  bool passed = false;
  std::string failure;  // what failed, when !passed

  std::string ToJson() const;
};

VerifyReport VerifyModel(const std::string& model_dir, const VerifyOptions& options = {});

}  // namespace stip
