#include "common/rpc/logits_transport.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <limits>
#include <vector>

#include "common/engine/sampler.h"
#include "common/error.h"
#include "common/format/dtype.h"
#include "common/rpc/tensor_wire.h"

namespace stip {

namespace {

// The smallest magnitude that FP16 rounds to infinity (65504 is its largest
// finite value; anything below 65520 rounds down to it).
constexpr double kFp16Overflow = 65520.0;

std::string Dims(const at::Tensor& t) { return ShapeString(t.sizes().vec()); }

}  // namespace

LogitsFormat LogitsFormat::Parse(const std::string& text) {
  LogitsFormat f;
  if (text == "fp32") return f;
  if (text == "fp16") {
    f.kind = Kind::kFp16;
    return f;
  }
  const std::string prefix = "top-k:";
  if (text.rfind(prefix, 0) == 0) {
    const std::string n = text.substr(prefix.size());
    char* end = nullptr;
    errno = 0;
    const long long k = n.empty() ? 0 : std::strtoll(n.c_str(), &end, 10);
    if (n.empty() || *end != '\0' || errno != 0 || k < 1) {
      throw InvalidArgument("logits format " + QuoteForMessage(text, 40) +
                            ": K must be a whole number >= 1 (e.g. top-k:64)");
    }
    f.kind = Kind::kTopK;
    f.top_k = k;
    return f;
  }
  throw InvalidArgument("unknown logits format " + QuoteForMessage(text, 40) +
                        " (fp32, fp16 or top-k:K)");
}

std::string LogitsFormat::ToString() const {
  switch (kind) {
    case Kind::kFp16:
      return "fp16";
    case Kind::kTopK:
      return "top-k:" + std::to_string(top_k);
    case Kind::kFp32:
      break;
  }
  return "fp32";
}

LogitsFormat LogitsFormatFromProto(const v1::LogitsFormat& p, int64_t vocab_size) {
  LogitsFormat f;
  switch (p.kind()) {
    case v1::LogitsFormat::FP32:
      break;
    case v1::LogitsFormat::FP16:
      f.kind = LogitsFormat::Kind::kFp16;
      break;
    case v1::LogitsFormat::TOP_K:
      if (p.top_k() < 1 || p.top_k() > vocab_size) {
        throw InvalidArgument("logits format TOP_K needs top_k in 1.." +
                              std::to_string(vocab_size) + " (the vocabulary size), got " +
                              std::to_string(p.top_k()));
      }
      f.kind = LogitsFormat::Kind::kTopK;
      f.top_k = p.top_k();
      return f;
    default:
      throw InvalidArgument("unknown logits format kind " + std::to_string(p.kind()) +
                            " (FP32, FP16 or TOP_K)");
  }
  if (p.top_k() != 0) {
    throw InvalidArgument("logits format " + f.ToString() + " takes no top_k (got " +
                          std::to_string(p.top_k()) + ")");
  }
  return f;
}

void LogitsFormatToProto(const LogitsFormat& f, v1::LogitsFormat* out) {
  out->Clear();
  switch (f.kind) {
    case LogitsFormat::Kind::kFp32:
      out->set_kind(v1::LogitsFormat::FP32);
      break;
    case LogitsFormat::Kind::kFp16:
      out->set_kind(v1::LogitsFormat::FP16);
      break;
    case LogitsFormat::Kind::kTopK:
      out->set_kind(v1::LogitsFormat::TOP_K);
      out->set_top_k(f.top_k);
      break;
  }
}

int64_t LogitsWireBytes(const LogitsFormat& f, int64_t rows, int64_t vocab_size) {
  if (f.kind == LogitsFormat::Kind::kTopK) return rows * f.top_k * (4 + 4);
  return rows * vocab_size * 4;  // FP16 may fall back to FP32
}

EncodedLogits EncodeLogits(const at::Tensor& logits, const LogitsFormat& f) {
  EncodedLogits e;
  switch (f.kind) {
    case LogitsFormat::Kind::kFp32:
      e.values = logits.to(at::kCPU, at::kFloat);
      break;
    case LogitsFormat::Kind::kFp16: {
      // A step whose logits leave FP16's range keeps FP32 (the datatype says
      // so); NaN compares false and stays NaN in FP16.
      const bool fits = !(logits.abs().max() >= kFp16Overflow).item<bool>();
      e.values = logits.to(at::kCPU, fits ? at::kHalf : at::kFloat);
      break;
    }
    case LogitsFormat::Kind::kTopK: {
      const int64_t k = std::min(f.top_k, logits.size(-1));
      auto [values, indices] = logits.topk(k, /*dim=*/-1, /*largest=*/true, /*sorted=*/true);
      e.values = values.to(at::kCPU, at::kFloat);
      e.indices = indices.to(at::kCPU, at::kInt);
      break;
    }
  }
  return e;
}

void ToWire(const EncodedLogits& e, v1::StepResult* out) {
  ToWire(e.values, out->mutable_logits());
  if (e.indices.defined()) {
    ToWire(e.indices, out->mutable_logits_indices());
  } else {
    out->clear_logits_indices();
  }
}

at::Tensor DecodeLogits(const v1::StepResult& r, const LogitsFormat& f, int64_t rows,
                        int64_t vocab) {
  const v1::Tensor& wire = r.logits();
  at::Tensor values = FromWire(wire);
  if (f.kind != LogitsFormat::Kind::kTopK) {
    const bool type_ok = values.scalar_type() == at::kFloat ||
                         (f.kind == LogitsFormat::Kind::kFp16 && values.scalar_type() == at::kHalf);
    if (!type_ok || values.dim() != 2 || values.size(0) != rows || values.size(1) != vocab) {
      throw InvalidArgument("logits " + Dims(values) + " " + wire.datatype() + ", expected [" +
                            std::to_string(rows) + ", " + std::to_string(vocab) + "] " +
                            (f.kind == LogitsFormat::Kind::kFp16 ? "FP16 or FP32" : "FP32"));
    }
    if (r.has_logits_indices()) {
      throw InvalidArgument("logits indices in a result of format " + f.ToString());
    }
    return values.to(at::kFloat);
  }
  const int64_t k = std::min(f.top_k, vocab);
  at::Tensor indices = FromWire(r.logits_indices());
  if (values.scalar_type() != at::kFloat || values.dim() != 2 || values.size(0) != rows ||
      values.size(1) != k) {
    throw InvalidArgument("top-k logits " + Dims(values) + " " + wire.datatype() + ", expected [" +
                          std::to_string(rows) + ", " + std::to_string(k) + "] FP32");
  }
  if (indices.scalar_type() != at::kInt || indices.sizes() != values.sizes()) {
    throw InvalidArgument("top-k logit indices " + Dims(indices) + " " +
                          r.logits_indices().datatype() + ", expected [" + std::to_string(rows) +
                          ", " + std::to_string(k) + "] INT32");
  }
  // Every index in range and none twice in a row: a scatter of anything else
  // would silently drop or misplace values.
  const int32_t* idx = indices.data_ptr<int32_t>();
  std::vector<int32_t> row(static_cast<size_t>(k));
  for (int64_t i = 0; i < rows; ++i) {
    std::copy(idx + i * k, idx + (i + 1) * k, row.begin());
    std::sort(row.begin(), row.end());
    if (row.front() < 0 || row.back() >= vocab) {
      throw InvalidArgument("top-k logit index " +
                            std::to_string(row.front() < 0 ? row.front() : row.back()) +
                            " is outside the vocabulary of " + std::to_string(vocab));
    }
    if (std::adjacent_find(row.begin(), row.end()) != row.end()) {
      throw InvalidArgument("top-k logit indices of row " + std::to_string(i) + " repeat an index");
    }
  }
  at::Tensor dense = at::full({rows, vocab}, -std::numeric_limits<float>::infinity(), at::kFloat);
  dense.scatter_(1, indices.to(at::kLong), values);
  return dense;
}

void CheckSamplingExact(const LogitsFormat& f, const SamplingOptions& s) {
  if (f.kind != LogitsFormat::Kind::kTopK) return;
  const std::string k = std::to_string(f.top_k);
  const std::string k1 = std::to_string(f.top_k - 1);
  const std::string why =
      "with logits format " + f.ToString() + " (only the " + k + " largest logits come back) ";
  if (f.top_k < 2) {
    throw InvalidArgument(why +
                          "a tie for the largest logit cannot be told apart from a token that "
                          "was not sent: use K >= 2 (e.g. top-k:64)");
  }
  if (s.repetition_penalty != 1.0) {
    throw InvalidArgument(why +
                          "a repetition penalty is not exact (it can lift tokens that were not "
                          "sent into the top): drop it, or use logits format fp32 or fp16");
  }
  if (s.greedy || s.temperature <= 0) return;
  if (s.top_k < 1 || s.top_k >= f.top_k) {
    throw InvalidArgument(why + "sampling is exact only with top_k in 1.." + k1 + ", got top_k " +
                          std::to_string(s.top_k) + (s.top_k == 0 ? " (off)" : "") +
                          ": set top_k, decode greedily, or use a larger K or logits format "
                          "fp32 or fp16");
  }
}

void CheckTopKRowExact(const at::Tensor& row, const LogitsFormat& f, const SamplingOptions& s) {
  if (f.kind != LogitsFormat::Kind::kTopK) return;
  const int64_t vocab = row.numel();
  if (f.top_k >= vocab) return;  // everything was sent
  const bool greedy = s.greedy || s.temperature <= 0;
  const int64_t rank = greedy ? 1 : s.top_k;  // the sampler's threshold: the rank-th largest
  // One pass for the values that were sent (all but -inf; those that were
  // -inf themselves count as -inf either way): cheaper than a top-k of the
  // vocabulary per token.
  const at::Tensor c = row.to(at::kCPU, at::kFloat).contiguous();
  const float* p = c.data_ptr<float>();
  const float minus_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> sent;
  sent.reserve(static_cast<size_t>(f.top_k));
  for (int64_t i = 0; i < vocab; ++i) {
    if (p[i] != minus_inf) sent.push_back(p[i]);
  }
  if (static_cast<int64_t>(sent.size()) < f.top_k)
    sent.resize(static_cast<size_t>(f.top_k), minus_inf);
  std::nth_element(sent.begin(), sent.begin() + (rank - 1), sent.end(), std::greater<float>());
  const float threshold = sent[static_cast<size_t>(rank - 1)];
  const float smallest = *std::min_element(sent.begin(), sent.end());
  if (smallest < threshold) return;
  throw FailedPrecondition(
      "with logits format " + f.ToString() + " the " + std::to_string(f.top_k) +
      " logits the server sent for this token reach down to the " +
      (greedy ? std::string("largest") : "top_k-th largest (" + std::to_string(rank) + ")") +
      " in a tie, so tokens that were not sent may tie with them too and " +
      (greedy ? "greedy decoding" : "sampling") +
      " would not be exact: use a larger K, or logits format fp32 or fp16");
}

}  // namespace stip
