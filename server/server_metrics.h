// stip-server's metrics (--metrics-listen): open sessions and streams, KV
// cache memory reserved, steps queued, steps and forward passes, tokens in
// (x' positions) and out (o' rows), batch size and batch latency histograms,
// errors by status code (ErrorCodeName: gRPC's names). Labels: status code names only -- never a
// user, an instance's key or anything a client sent.
#pragma once

#include <memory>

#include "common/error.h"

namespace prometheus {
class Collectable;
class Counter;
class Histogram;
template <typename T>
class Family;
class Registry;
}  // namespace prometheus

namespace stip {

class MetricsEndpoint;

struct SchedulerCounters;
class StipServer;
class StateCollector;

class ServerMetrics {
 public:
  // Registers the families in `endpoint`'s registry. Outlives the server
  // (its schedulers call into counters()).
  explicit ServerMetrics(MetricsEndpoint& endpoint);
  ~ServerMetrics();

  // For ServerOptions.store.counters (batch histograms are fed from it).
  std::shared_ptr<SchedulerCounters> counters() const { return counters_; }
  // For InferenceOptions.on_error.
  void Error(ErrorCode code);

  // The running server's state is read at each scrape from now on, until
  // Detach() (call it before the server is destroyed).
  void Attach(StipServer* server);
  void Detach() { Attach(nullptr); }

 private:
  MetricsEndpoint& endpoint_;
  std::shared_ptr<SchedulerCounters> counters_;
  prometheus::Family<prometheus::Counter>& errors_;
  prometheus::Histogram& batch_seconds_;
  prometheus::Histogram& batch_size_;
  std::shared_ptr<StateCollector> state_;
};

}  // namespace stip
