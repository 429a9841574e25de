// stip-server: the cloud daemon (party P2). Stores STIP-transformed models
// (ModelStore, for the developer) and runs client sessions on them
// (Inference), batching the steps of concurrent sessions. It never holds
// plaintext weights, embeddings, keys or logits.
//
// Two ports: --listen serves Inference (clients; TLS), --admin-listen serves
// ModelStore (the developer; mutual TLS against --admin-ca). On start it
// prints "stip-server admin on HOST:PORT" (with --admin-listen) and then
// "stip-server listening on HOST:PORT" to stdout once it accepts calls; logs
// go to stderr. SIGTERM / SIGINT shut it down gracefully.
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "common/error.h"
#include "common/metrics/metrics.h"
#include "common/rpc/tls.h"
#include "common/util/no_core_dumps.h"
#include "server/server_metrics.h"
#include "server/stip_server.h"

int main(int argc, char** argv) {
  stip::DisableCoreDumps();  // keys and tokens stay out of core files
  CLI::App app{"stip-server: serve STIP-transformed models to stip clients"};
  stip::ServerOptions opt;
  double max_kv_gib = 4;
  double shutdown_grace_s = 10;
  uint64_t max_message_bytes = stip::kMaxMessageBytes;
  std::string log_level = "info";
  std::string metrics_listen;

  app.add_option("--listen", opt.listen, "host:port to listen on (port 0: pick a free one)")
      ->capture_default_str();
  app.add_option("--store", opt.store.dir, "model store directory (models in STORE/models/<id>)")
      ->required();
  app.add_option("--device", opt.store.device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  app.add_option("--dtype", opt.store.dtype,
                 "compute dtype: auto (fp32 on CPU, the checkpoint's on CUDA) | float32 | "
                 "float16 | bfloat16")
      ->capture_default_str();
  app.add_flag("--load-all,!--no-load-all", opt.store.load_all,
               "load every stored model at start-up (default: on)");
  app.add_option("--max-sessions", opt.inference.max_sessions,
                 "open sessions at once (0: no limit)")
      ->capture_default_str();
  app.add_option("--max-sessions-per-user", opt.inference.max_sessions_per_user,
                 "open sessions at once per user (the user named by the access token; 0: no "
                 "limit)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-encode-sequences", opt.inference.max_encode_sequences,
                 "sequences (texts, images) per Encode call of an encoder model (0: no limit)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-message-bytes", max_message_bytes,
                 "largest session message (a step's hidden states) accepted; larger steps are "
                 "refused with RESOURCE_EXHAUSTED (KiB/MiB suffixes; at most 256MiB)")
      ->capture_default_str()
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(uint64_t{1024}, uint64_t{stip::kMaxMessageBytes}));
  app.add_option("--max-context", opt.store.max_context,
                 "positions per session (0: the model's maximum)")
      ->capture_default_str();
  app.add_option("--max-kv-gib", max_kv_gib,
                 "KV cache memory of all sessions together (0: no limit)")
      ->capture_default_str();
  app.add_option("--kv-pool-sequences", opt.store.kv_pool_sequences,
                 "preallocate per model a KV pool of N sequences x --max-context positions: "
                 "sessions take a slot, decode steps run batched attention (CUDA graphs on a "
                 "GPU); 0: a growing cache per session under --max-kv-gib")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-batch", opt.store.max_batch, "sequences per batched forward pass")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--batch-wait-us", opt.store.batch_wait_us,
                 "hold a step up to this long for other sessions' steps to join its batch")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--idle-timeout-s", opt.inference.idle_timeout_s,
                 "end sessions that send nothing for this long (0: never)")
      ->capture_default_str();
  app.add_option("--tls-cert", opt.tls.cert_file, "server certificate chain (PEM)");
  app.add_option("--tls-key", opt.tls.key_file, "server private key (PEM)");
  app.add_option("--tls-ca", opt.tls.ca_file, "CA for client certificates (PEM)");
  app.add_flag("--require-client-cert", opt.tls.require_client_cert,
               "mutual TLS on the public port: clients must present a certificate signed by "
               "--tls-ca");
  app.add_option("--admin-listen", opt.admin.listen,
                 "host:port of the ModelStore, for the developer (mutual TLS); none: the store "
                 "cannot be changed remotely");
  app.add_option("--admin-ca", opt.admin.ca_file,
                 "CA that signs the developer's client certificate (required with "
                 "--admin-listen)");
  app.add_option("--admin-allow-cn", opt.admin.allowed_common_names,
                 "accept only admin client certificates with this subject CN (repeatable; "
                 "default: any the --admin-ca signed)");
  app.add_flag("--insecure", opt.tls.insecure,
               "serve without TLS on both ports (plaintext, anyone may change the store; warns)");
  app.add_option("--record-inputs", opt.inference.record_inputs_dir,
                 "TEST ONLY: write each session's first x' to DIR/<session_id>.safetensors");
  app.add_option("--shutdown-grace-s", shutdown_grace_s,
                 "on SIGTERM/SIGINT, let running calls finish for this long")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "trace | debug | info | warn | error")
      ->capture_default_str();
  app.add_option("--metrics-listen", metrics_listen,
                 "HOST:PORT to serve Prometheus metrics at /metrics (plain HTTP; no user data)");
  CLI11_PARSE(app, argc, argv);

  auto logger = spdlog::stderr_color_mt("stip-server");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(log_level));

  if (opt.tls.insecure && (!opt.tls.cert_file.empty() || !opt.tls.key_file.empty())) {
    std::fprintf(stderr,
                 "stip-server: error: --insecure and --tls-cert/--tls-key exclude each other\n");
    return 2;
  }
  if (!opt.tls.insecure && (opt.tls.cert_file.empty() || opt.tls.key_file.empty())) {
    std::fprintf(stderr,
                 "stip-server: error: TLS needs --tls-cert and --tls-key (or --insecure for "
                 "plaintext)\n");
    return 2;
  }
  if (opt.tls.require_client_cert && opt.tls.ca_file.empty()) {
    std::fprintf(stderr, "stip-server: error: --require-client-cert needs --tls-ca\n");
    return 2;
  }
  if (!opt.admin.listen.empty() && !opt.tls.insecure && opt.admin.ca_file.empty()) {
    std::fprintf(stderr,
                 "stip-server: error: --admin-listen needs --admin-ca (the CA of the developer's "
                 "client certificate)\n");
    return 2;
  }
  opt.inference.max_kv_bytes = static_cast<int64_t>(max_kv_gib * double(int64_t{1} << 30));
  opt.inference.max_message_bytes = static_cast<int64_t>(max_message_bytes);

  // Every thread started from here on inherits the blocked signals; main
  // waits for them below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  try {
    // Before the server (its schedulers feed the histograms), destroyed after it.
    std::unique_ptr<stip::MetricsEndpoint> metrics;
    std::unique_ptr<stip::ServerMetrics> server_metrics;
    if (!metrics_listen.empty()) {
      metrics = std::make_unique<stip::MetricsEndpoint>();
      server_metrics = std::make_unique<stip::ServerMetrics>(*metrics);
      opt.store.counters = server_metrics->counters();
      opt.inference.on_error = [m = server_metrics.get()](stip::ErrorCode code) { m->Error(code); };
    }
    stip::StipServer server(opt);
    if (server_metrics) {
      server_metrics->Attach(&server);
      const int port = metrics->Listen(metrics_listen);
      std::cout << "stip-server metrics on http://"
                << metrics_listen.substr(0, metrics_listen.rfind(':')) << ":" << port << "/metrics"
                << std::endl;
    }
    struct DetachMetrics {
      stip::ServerMetrics* m;
      ~DetachMetrics() {
        if (m) m->Detach();
      }
    } detach{server_metrics.get()};
    if (server.admin_port() != 0) {
      std::cout << "stip-server admin on " << server.admin_address() << std::endl;
      spdlog::info("serving ModelStore on {} ({})", server.admin_address(),
                   opt.tls.insecure ? "PLAINTEXT: anyone may change the store" : "mutual TLS");
    } else {
      spdlog::info("no --admin-listen: the model store cannot be changed remotely");
    }
    std::cout << "stip-server listening on " << server.address() << std::endl;
    spdlog::info("serving Inference on {} ({})", server.address(),
                 opt.tls.insecure ? "PLAINTEXT" : "TLS");
    int sig = 0;
    while (sigwait(&signals, &sig) != 0) {
    }
    spdlog::info("{}: shutting down (grace {} s)", sig == SIGTERM ? "SIGTERM" : "SIGINT",
                 shutdown_grace_s);
    server.Shutdown(std::chrono::milliseconds(static_cast<int64_t>(shutdown_grace_s * 1000)));
    spdlog::info("stopped");
  } catch (const stip::Error& e) {
    spdlog::error("{}", e.what());
    std::fprintf(stderr, "stip-server: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stip-server: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
