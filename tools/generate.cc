// stip-generate: plain local generation with the engine (no STIP, one
// process). A reference point for the three-party path and a quick way to try
// a model: one completion with --prompt, otherwise an interactive prompt loop.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "common/engine/causal_lm.h"
#include "common/engine/sampler.h"
#include "common/engine/tensor_util.h"
#include "common/error.h"
#include "common/tokenizer/tokenizer.h"

namespace {

int Complete(const stip::CausalLM& lm, const stip::Tokenizer& tok, const std::string& prompt,
             int max_new, const stip::SamplingOptions& sampling) {
  std::vector<int64_t> ids = tok.Encode(prompt);
  if (ids.empty()) throw stip::InvalidArgument("the prompt encodes to no tokens");
  stip::Sampler sampler(sampling);
  stip::KvCache cache = lm.server->NewCache();
  stip::StreamDecoder decoder(tok);
  // Prime the decoder with the prompt, so that the first new token keeps the
  // leading space SentencePiece gives it after text.
  for (int64_t id : ids) decoder.Push(id);
  std::fputs(prompt.c_str(), stdout);
  std::vector<int64_t> pending = ids, history = ids;
  const auto& eos = lm.client->config().eos_token_ids;
  for (int i = 0; i < max_new; ++i) {
    at::Tensor x = lm.client->Embed(pending, cache.length());
    at::Tensor logits = lm.server->Forward({{x, &cache, false}})[0][0];
    int64_t next = sampler.Next(logits, history);
    if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
    std::fputs(decoder.Push(next).c_str(), stdout);
    std::fflush(stdout);
    pending = {next};
    history.push_back(next);
  }
  std::fputs(decoder.Flush().c_str(), stdout);
  std::fputs("\n", stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stip-generate: local plain generation with the stip engine"};
  std::string model, prompt, device = "cpu", dtype = "auto";
  int max_new = 64;
  stip::SamplingOptions s;
  uint64_t seed = 0;
  app.add_option("--model", model, "Hugging Face model directory")->required();
  app.add_option("--prompt", prompt, "prompt (omit for an interactive loop)");
  app.add_option("--max-new-tokens", max_new, "tokens to generate")->check(CLI::Range(1, 1 << 20));
  app.add_flag("--greedy", s.greedy, "greedy decoding");
  app.add_option("--temperature", s.temperature, "sampling temperature");
  app.add_option("--top-k", s.top_k, "top-k sampling (0: off)");
  app.add_option("--top-p", s.top_p, "nucleus sampling (1: off)");
  app.add_option("--repetition-penalty", s.repetition_penalty, "repetition penalty (1: off)");
  auto* seed_opt = app.add_option("--seed", seed, "random seed");
  app.add_option("--device", device, "auto, cpu or cuda");
  app.add_option("--dtype", dtype, "auto, float32, float16 or bfloat16");
  CLI11_PARSE(app, argc, argv);
  if (*seed_opt) s.seed = seed;
  try {
    stip::LoadOptions opt;
    opt.device = stip::ParseDevice(device);
    opt.dtype = stip::ParseComputeDType(dtype, "float16", opt.device);
    stip::CausalLM lm = stip::CausalLM::Load(model, opt);
    auto tok = stip::Tokenizer::FromDirectory(model);
    if (!prompt.empty()) return Complete(lm, *tok, prompt, max_new, s);
    std::string line;
    while (std::fputs("> ", stdout), std::fflush(stdout), std::getline(std::cin, line)) {
      if (line == "/exit") break;
      if (!line.empty()) Complete(lm, *tok, line, max_new, s);
    }
    return 0;
  } catch (const stip::Error& e) {
    std::fprintf(stderr, "stip-generate: error: %s\n", e.what());
    return 2;
  }
}
