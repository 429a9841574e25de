// A LogitsBackend that runs the (transformed) server half in this process:
// for tests, and for the offline `--server-model DIR` mode of stip-client.
// It is not a deployment mode: whoever holds the transformed server
// checkpoint and the client bundle together holds everything STIP hides from
// the server. The sessions behave like a stip server's: x' in, o' out,
// a KV cache per session.
#pragma once

#include <memory>

#include "client/logits_backend.h"
#include "common/engine/causal_lm.h"

namespace stip {

class LocalServerBackend : public LogitsBackend {
 public:
  // `max_context`: 0 = the model's max_position_embeddings. `logits_format`:
  // results go through the same encoding as a stip server's.
  explicit LocalServerBackend(std::shared_ptr<const ServerModel> model, int64_t max_context = 0,
                              LogitsFormat logits_format = LogitsFormat());

  SessionInfo Open() override;
  bool is_open() const override { return open_; }
  const SessionInfo& info() const override { return info_; }
  at::Tensor Step(const at::Tensor& x_prime, bool all_logits) override;
  void Truncate(int64_t length) override;
  int64_t context_length() const override { return open_ ? cache_.length() : 0; }
  void Close() override;
  LogitsFormat logits_format() const override { return logits_format_; }

 private:
  std::shared_ptr<const ServerModel> model_;
  int64_t max_context_;
  LogitsFormat logits_format_;
  SessionInfo info_;
  KvCache cache_;
  bool open_ = false;
  uint64_t sessions_ = 0;
};

}  // namespace stip
