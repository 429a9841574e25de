#include "server/server_metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <mutex>
#include <string>

#include "common/metrics/metrics.h"
#include "server/batch_scheduler.h"
#include "server/stip_server.h"

namespace stip {

namespace {

prometheus::MetricFamily One(const std::string& name, const std::string& help,
                             prometheus::MetricType type, double value) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(m);
  return f;
}

}  // namespace

// Reads the server's state at scrape time.
class StateCollector : public prometheus::Collectable {
 public:
  explicit StateCollector(std::shared_ptr<SchedulerCounters> counters)
      : counters_(std::move(counters)) {}

  void Set(StipServer* server) {
    std::lock_guard<std::mutex> lock(mu_);
    server_ = server;
  }

  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    std::vector<prometheus::MetricFamily> out;
    const SchedulerCounters& c = *counters_;
    out.push_back(One("stip_server_steps_total", "steps run (ok or failed)", MetricType::Counter,
                      static_cast<double>(c.steps.load())));
    out.push_back(One("stip_server_forwards_total", "batched forward passes that succeeded",
                      MetricType::Counter, static_cast<double>(c.forwards.load())));
    out.push_back(One("stip_server_tokens_in_total", "x' positions run through the model",
                      MetricType::Counter, static_cast<double>(c.positions_in.load())));
    out.push_back(One("stip_server_tokens_out_total", "o' rows (permuted logits) computed",
                      MetricType::Counter, static_cast<double>(c.logits_rows_out.load())));
    out.push_back(One("stip_server_queue_depth", "steps waiting for a forward pass",
                      MetricType::Gauge,
                      static_cast<double>(std::max<int64_t>(0, c.queued.load()))));
    std::lock_guard<std::mutex> lock(mu_);
    if (server_) {
      out.push_back(One("stip_server_open_sessions", "sessions holding a session slot",
                        MetricType::Gauge, server_->inference().active_sessions()));
      out.push_back(One("stip_server_open_streams", "Session streams open (opened or not)",
                        MetricType::Gauge, server_->inference().open_streams()));
      out.push_back(One("stip_server_kv_reserved_bytes",
                        "KV cache memory reserved by open sessions", MetricType::Gauge,
                        static_cast<double>(server_->inference().kv_reserved_bytes())));
    }
    return out;
  }

 private:
  std::shared_ptr<SchedulerCounters> counters_;
  mutable std::mutex mu_;
  StipServer* server_ = nullptr;
};

ServerMetrics::ServerMetrics(MetricsEndpoint& endpoint)
    : endpoint_(endpoint),
      counters_(std::make_shared<SchedulerCounters>()),
      errors_(prometheus::BuildCounter()
                  .Name("stip_server_errors_total")
                  .Help("refused steps and sessions ended with an error, by gRPC status code")
                  .Register(endpoint.registry())),
      batch_seconds_(prometheus::BuildHistogram()
                         .Name("stip_server_step_seconds")
                         .Help("latency of one batched forward pass (every step in the batch "
                               "waits for it), logits on the host")
                         .Register(endpoint.registry())
                         .Add({}, LatencyBuckets())),
      batch_size_(
          prometheus::BuildHistogram()
              .Name("stip_server_batch_size")
              .Help("sequences per batched forward pass")
              .Register(endpoint.registry())
              .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128})),
      state_(std::make_shared<StateCollector>(counters_)) {
  counters_->on_batch = [this](size_t batch, double seconds) {
    batch_seconds_.Observe(seconds);
    batch_size_.Observe(static_cast<double>(batch));
  };
  endpoint.AddCollectable(state_);
}

ServerMetrics::~ServerMetrics() { Detach(); }

void ServerMetrics::Error(ErrorCode code) {
  errors_.Add({{"code", ErrorCodeName(code)}}).Increment();
}

void ServerMetrics::Attach(StipServer* server) { state_->Set(server); }

}  // namespace stip
