// Prometheus metrics of a daemon (`--metrics-listen ADDR`): a prometheus-cpp
// registry the daemon's parts add their families to, serialized in the text
// format by prometheus-cpp and served at http://ADDR/metrics on its own port
// (a scraper never shares a port or credentials with users). The HTTP server
// is cpp-httplib, not prometheus-cpp's civetweb exposer: Debian's
// prometheus-cpp-pull 1.0.1 failed to start inside the daemons ("null
// context when constructing CivetServer" after a successful bind) and
// cannot listen on port 0.
//
// Rule for every metric in stip: labels carry only fixed vocabularies
// (endpoint names, status codes, outcome names), never a token, a user's text,
// a user name or a key.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace prometheus {
class Collectable;
class Registry;
}  // namespace prometheus

namespace stip {

class MetricsEndpoint {
 public:
  MetricsEndpoint();
  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  prometheus::Registry& registry() { return *registry_; }

  // Serves /metrics on HOST:PORT (port 0: any); returns the port. Throws
  // kInvalidArgument for a malformed address, kFailedPrecondition when it
  // cannot listen.
  int Listen(const std::string& address);

  // Another source of metrics, read at every scrape (gauges of the daemon's
  // state). Kept alive here. Call before Listen.
  void AddCollectable(std::shared_ptr<prometheus::Collectable> collectable);

 private:
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  std::string Scrape() const;

  struct Http;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Http> http_;
};

// "OK", "CANCELLED", ..., "UNAUTHENTICATED" for a gRPC status code (a label value).
const char* GrpcCodeName(int code);

// Latency buckets in seconds, 0.5 ms .. ~30 s.
std::vector<double> LatencyBuckets();

}  // namespace stip
