#include "common/engine/sampler.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "common/error.h"

namespace stip {

namespace {

// The first index of the largest value (a NaN counts as largest, as in
// torch.argmax): a vectorized max, then a scan for it -- about 3x faster than
// at::argmax over a vocabulary.
int64_t FirstArgmax(const at::Tensor& v) {
  const at::Tensor c = v.contiguous();
  const float m = c.max().item<float>();
  const float* p = c.data_ptr<float>();
  const int64_t n = c.numel();
  if (std::isnan(m)) return std::find_if(p, p + n, [](float x) { return std::isnan(x); }) - p;
  return std::find(p, p + n, m) - p;
}

}  // namespace

Sampler::Sampler(SamplingOptions options) : options_(options) {
  if (options_.top_k < 0) throw InvalidArgument("top_k must be >= 0");
  if (!(options_.top_p > 0 && options_.top_p <= 1))
    throw InvalidArgument("top_p must be in (0, 1]");
  if (!(options_.repetition_penalty > 0)) throw InvalidArgument("repetition_penalty must be > 0");
  uint64_t seed = options_.seed ? *options_.seed : std::random_device{}();
  gen_ = at::make_generator<at::CPUGeneratorImpl>(seed);
}

int64_t Sampler::Next(const at::Tensor& logits_in, const std::vector<int64_t>& history) {
  // Copied only where it is changed in place (the penalty); every other step
  // below makes new tensors.
  at::Tensor logits = logits_in.to(at::kCPU, at::kFloat).reshape({-1});
  const int64_t vocab = logits.size(0);
  if (options_.repetition_penalty != 1.0 && !history.empty()) {
    logits = logits.clone();
    std::vector<int64_t> seen;
    for (int64_t id : history) {
      if (id >= 0 && id < vocab) seen.push_back(id);
    }
    at::Tensor idx = at::tensor(at::ArrayRef<int64_t>(seen), at::kLong);
    at::Tensor v = logits.index_select(0, idx);
    v = at::where(v < 0, v * options_.repetition_penalty, v / options_.repetition_penalty);
    logits.index_put_({idx}, v);
  }
  if (options_.greedy || options_.temperature <= 0) return FirstArgmax(logits);
  logits = logits / options_.temperature;
  if (options_.top_k > 0 && options_.top_k < vocab) {
    at::Tensor kth = std::get<0>(logits.topk(options_.top_k)).min();
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
  }
  if (options_.top_p < 1.0) {
    auto [sorted, order] = logits.sort(/*dim=*/-1, /*descending=*/true);
    at::Tensor cum = at::softmax(sorted, -1).cumsum(-1);
    // Drop tokens once the mass before them already exceeds top_p (keep at least one).
    at::Tensor drop = (cum - at::softmax(sorted, -1)) > options_.top_p;
    at::Tensor mask = at::zeros_like(drop).scatter(0, order, drop);
    logits = logits.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(logits, -1);
  return at::multinomial(probs, 1, false, gen_).item<int64_t>();
}

}  // namespace stip
