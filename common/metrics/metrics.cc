#include "common/metrics/metrics.h"

#include <prometheus/collectable.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <mutex>
#include <thread>

#include "common/error.h"
#include "common/metrics/httplib.h"

namespace stip {

struct MetricsEndpoint::Http {
  httplib::Server server;
  std::thread thread;
  ~Http() {
    server.stop();
    if (thread.joinable()) thread.join();
  }
};

MetricsEndpoint::MetricsEndpoint() : registry_(std::make_shared<prometheus::Registry>()) {}

MetricsEndpoint::~MetricsEndpoint() = default;

std::string MetricsEndpoint::Scrape() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (const auto& c : collectables_) {
    std::vector<prometheus::MetricFamily> more = c->Collect();
    families.insert(families.end(), more.begin(), more.end());
  }
  return prometheus::TextSerializer().Serialize(families);
}

int MetricsEndpoint::Listen(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    throw InvalidArgument("--metrics-listen " + QuoteForMessage(address) + ": expected HOST:PORT");
  }
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = -1;
  try {
    size_t used = 0;
    port = std::stoi(address.substr(colon + 1), &used);
    if (used != address.size() - colon - 1 || port < 0 || port > 65535) port = -1;
  } catch (...) {
  }
  if (port < 0)
    throw InvalidArgument("--metrics-listen " + QuoteForMessage(address) + ": bad port");
  http_ = std::make_unique<Http>();
  http_->server.new_task_queue = [] { return new httplib::ThreadPool(2); };
  http_->server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(Scrape(), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (port == 0) {
    port = http_->server.bind_to_any_port(host);
  } else if (!http_->server.bind_to_port(host, port)) {
    port = -1;
  }
  if (port < 0) {
    http_.reset();
    throw FailedPrecondition("cannot serve metrics on " + QuoteForMessage(address) +
                             " (address in use or not local?)");
  }
  Http* h = http_.get();
  h->thread = std::thread([h] { h->server.listen_after_bind(); });
  return port;
}

void MetricsEndpoint::AddCollectable(std::shared_ptr<prometheus::Collectable> collectable) {
  collectables_.push_back(std::move(collectable));  // before Listen (not guarded)
}

const char* GrpcCodeName(int code) {
  // stip::ErrorCode mirrors gRPC's codes: one table of names (common/error.h).
  if (code == 0) return "OK";
  return code >= 1 && code <= 16 ? ErrorCodeName(static_cast<ErrorCode>(code)) : "UNKNOWN";
}

std::vector<double> LatencyBuckets() {
  std::vector<double> b;
  for (double v = 0.0005; v < 40; v *= 2) b.push_back(v);
  return b;
}

}  // namespace stip
