#include "client/local_backend.h"

#include "common/error.h"
#include "common/format/dtype.h"

namespace stip {

LocalServerBackend::LocalServerBackend(std::shared_ptr<const ServerModel> model,
                                       int64_t max_context, LogitsFormat logits_format)
    : model_(std::move(model)), max_context_(max_context), logits_format_(logits_format) {
  if (!model_) throw InvalidArgument("LocalServerBackend needs a model");
  const ModelConfig& c = model_->config();
  if (max_context_ <= 0 || (c.max_positions > 0 && max_context_ > c.max_positions)) {
    max_context_ = c.max_positions;
  }
}

SessionInfo LocalServerBackend::Open() {
  Close();
  const ModelConfig& c = model_->config();
  {
    v1::LogitsFormat asked;  // checked as a stip server checks an open
    LogitsFormatToProto(logits_format_, &asked);
    LogitsFormatFromProto(asked, c.vocab_size);
  }
  info_ = SessionInfo{};
  info_.session_id = "local-" + std::to_string(++sessions_);
  info_.instance_id = c.stip_instance;
  info_.hidden_size = c.hidden_size;
  info_.vocab_size = c.vocab_size;
  info_.max_context = max_context_;
  const at::ScalarType dtype = model_->options().dtype;
  info_.datatype = dtype == at::kHalf ? "FP16" : dtype == at::kBFloat16 ? "BF16" : "FP32";
  cache_ = model_->NewCache();
  open_ = true;
  return info_;
}

at::Tensor LocalServerBackend::Step(const at::Tensor& x_prime, bool all_logits) {
  if (!open_) throw FailedPrecondition("no session is open");
  if (x_prime.dim() != 2 || x_prime.size(0) < 1 || x_prime.size(1) != info_.hidden_size) {
    throw InvalidArgument("a step needs x' of shape [T >= 1, " + std::to_string(info_.hidden_size) +
                          "], got " + ShapeString(x_prime.sizes().vec()));
  }
  if (max_context_ > 0 && cache_.length() + x_prime.size(0) > max_context_) {
    throw ResourceExhausted("context limit: " + std::to_string(cache_.length()) + " + " +
                            std::to_string(x_prime.size(0)) + " positions exceed " +
                            std::to_string(max_context_));
  }
  at::Tensor x = x_prime.to(model_->options().device, model_->options().dtype);
  at::Tensor o = model_->Forward({{x, &cache_, all_logits}})[0];
  if (logits_format_.kind == LogitsFormat::Kind::kFp32) return o.to(at::kCPU, at::kFloat);
  v1::StepResult wire;  // the server's encoding and the client's decoding
  ToWire(EncodeLogits(o, logits_format_), &wire);
  return DecodeLogits(wire, logits_format_, o.size(0), info_.vocab_size);
}

void LocalServerBackend::Truncate(int64_t length) {
  if (!open_) throw FailedPrecondition("no session is open");
  if (length < 0 || length > cache_.length()) {
    throw InvalidArgument("cannot truncate a session of " + std::to_string(cache_.length()) +
                          " positions to " + std::to_string(length));
  }
  cache_.Truncate(length);
}

void LocalServerBackend::Close() {
  cache_ = KvCache();
  open_ = false;
}

}  // namespace stip
