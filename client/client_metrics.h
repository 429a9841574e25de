// The client daemon's metrics (stip-client serve --metrics-listen): HTTP API
// requests by endpoint, errors by HTTP status, time to first token, decode
// tokens per second, tokens in and out. No label carries text or a key.
#pragma once

#include <cstddef>
#include <string>

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
class Histogram;
}  // namespace prometheus

namespace stip {

class ClientMetrics {
 public:
  explicit ClientMetrics(prometheus::Registry& registry);

  // endpoint: "chat", "completions" (a fixed set).
  void Request(const std::string& endpoint);
  void Error(int http_status);
  // ttft_s / tokens_per_s < 0: not measured (no token, one token).
  void Completed(size_t prompt_tokens, size_t completion_tokens, double ttft_s,
                 double tokens_per_s);

 private:
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& errors_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& completion_tokens_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& tokens_per_s_;
};

}  // namespace stip
