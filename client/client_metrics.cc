#include "client/client_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "common/metrics/metrics.h"

namespace stip {

ClientMetrics::ClientMetrics(prometheus::Registry& registry)
    : requests_(prometheus::BuildCounter()
                    .Name("stip_client_http_requests_total")
                    .Help("completion requests to the HTTP API, by endpoint")
                    .Register(registry)),
      errors_(prometheus::BuildCounter()
                  .Name("stip_client_http_errors_total")
                  .Help("completion requests answered with an error, by HTTP status")
                  .Register(registry)),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name("stip_client_prompt_tokens_total")
                         .Help("prompt tokens of completed requests")
                         .Register(registry)
                         .Add({})),
      completion_tokens_(prometheus::BuildCounter()
                             .Name("stip_client_completion_tokens_total")
                             .Help("tokens generated for completed requests")
                             .Register(registry)
                             .Add({})),
      ttft_(prometheus::BuildHistogram()
                .Name("stip_client_time_to_first_token_seconds")
                .Help("from the request to its first generated token")
                .Register(registry)
                .Add({}, LatencyBuckets())),
      tokens_per_s_(prometheus::BuildHistogram()
                        .Name("stip_client_decode_tokens_per_second")
                        .Help("decode speed of a completed request (after its first token)")
                        .Register(registry)
                        .Add({}, prometheus::Histogram::BucketBoundaries{
                                     1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000})) {
  // The endpoints exist from the start (a scraper sees 0, not nothing).
  for (const char* e : {"chat", "completions"}) requests_.Add({{"endpoint", e}});
}

void ClientMetrics::Request(const std::string& endpoint) {
  requests_.Add({{"endpoint", endpoint}}).Increment();
}

void ClientMetrics::Error(int http_status) {
  errors_.Add({{"status", std::to_string(http_status)}}).Increment();
}

void ClientMetrics::Completed(size_t prompt_tokens, size_t completion_tokens, double ttft_s,
                              double tokens_per_s) {
  prompt_tokens_.Increment(static_cast<double>(prompt_tokens));
  completion_tokens_.Increment(static_cast<double>(completion_tokens));
  if (ttft_s >= 0) ttft_.Observe(ttft_s);
  if (tokens_per_s >= 0) tokens_per_s_.Observe(tokens_per_s);
}

}  // namespace stip
