#include "developer/rpc_commands.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "common/error.h"
#include "common/metrics/metrics.h"
#include "common/rpc/server_setup.h"
#include "common/util/files.h"
#include "developer/access_sync.h"
#include "developer/developer_metrics.h"
#include "developer/instance_groups.h"
#include "developer/instance_rollout.h"
#include "developer/model_pusher.h"
#include "developer/registry_service.h"
#include "developer/state_store.h"
#include "developer/user_registry.h"

namespace stip {

namespace {

// Logs go to stderr: stdout carries only what scripts read.
void LogToStderr() {
  static bool done = false;
  if (done) return;
  done = true;
  auto logger = spdlog::stderr_color_mt("stip-developer");
  spdlog::set_default_logger(logger);
}

// SIGTERM/SIGINT: a flag for loops plus a self-pipe for the waiting thread.
std::atomic<bool> g_stop{false};
int g_signal_pipe[2] = {-1, -1};

void OnSignal(int) {
  g_stop.store(true);
  if (g_signal_pipe[1] >= 0) {
    char c = 1;
    ssize_t n = write(g_signal_pipe[1], &c, 1);
    (void)n;
  }
}

void InstallSignalHandlers() {
  if (pipe2(g_signal_pipe, O_CLOEXEC) != 0) throw Internal("pipe2 failed");
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

void WaitForSignal() {
  char c;
  while (!g_stop.load()) {
    ssize_t n = read(g_signal_pipe[0], &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
  }
}

// Runs `task` every `interval_s` seconds on a thread until Stop (or destruction).
class PeriodicTask {
 public:
  PeriodicTask(double interval_s, std::function<void()> task)
      : period_(static_cast<int64_t>(interval_s * 1000)), task_(std::move(task)) {
    thread_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!stop_) {
        cv_.wait_for(lock, period_, [this] { return stop_; });
        if (stop_) break;
        lock.unlock();
        try {
          task_();
        } catch (const std::exception& e) {
          spdlog::error("state sync: {}", e.what());
        }
        lock.lock();
      }
    });
  }
  ~PeriodicTask() { Stop(); }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::chrono::milliseconds period_;
  std::function<void()> task_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace

std::string WithPort(const std::string& address, int port) {
  size_t colon = address.rfind(':');
  std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  return host + ":" + std::to_string(port);
}

int RunPush(const PushCommand& cmd) {
  LogToStderr();
  std::string recorded = InstanceIdOfServerDir(cmd.model_dir);
  std::string instance = cmd.instance_id.empty() ? recorded : cmd.instance_id;
  if (instance != recorded) {
    throw InvalidArgument(cmd.model_dir + " holds instance " + recorded + ", not " + instance);
  }
  PushOptions opt;
  opt.load = cmd.load;
  auto channel = MakeChannel(cmd.server, cmd.tls, "stip-developer");
  PushResult r = PushModel(channel, instance, cmd.model_dir, opt);
  if (!cmd.state_dir.empty()) {
    StateStore state(cmd.state_dir);
    UserRegistry users(state);
    auth::SigningKey key = state.TokenSigningKey();
    v1::AccessInfo info =
        PushAccess(channel, instance, key.public_key().pem(),
                   state.PreviousTokenKeys(auth::NowUnix()), users.RevokedTokens());
    spdlog::info("instance {} accepts tokens of key {}; {} revoked token(s)", instance,
                 info.token_key_id(), info.revoked_tokens());
  } else {
    spdlog::warn(
        "no --state: no token key registered for instance {}; the server refuses sessions on it "
        "until `stip-developer serve` (or push --state) registers one",
        instance);
  }
  if (r.already_stored) {
    std::printf("instance %s already stored on %s\n", instance.c_str(), cmd.server.c_str());
  } else {
    std::printf("pushed instance %s to %s: %llu files, %llu bytes in %.2f s (%.1f MiB/s)%s\n",
                instance.c_str(), cmd.server.c_str(), static_cast<unsigned long long>(r.files),
                static_cast<unsigned long long>(r.bytes), r.seconds,
                r.seconds > 0 ? r.bytes / 1048576.0 / r.seconds : 0.0,
                r.info.loaded() ? ", loaded" : "");
  }
  std::fflush(stdout);
  return 0;
}

int RunServe(const ServeCommand& cmd) {
  LogToStderr();
  if (cmd.servers.empty()) throw InvalidArgument("serve needs at least one --server");
  if (cmd.public_server_address.empty()) {
    throw InvalidArgument(
        "serve needs --public-server-address (the servers' Inference address users connect to; "
        "--server is the admin address the developer pushes to)");
  }
  if (!(cmd.token_ttl_hours > 0)) throw InvalidArgument("--token-ttl-hours must be positive");
  if (!(cmd.access_sync_s > 0)) throw InvalidArgument("--access-sync-s must be positive");
  if (!cmd.insecure && (cmd.tls_cert.empty() || cmd.tls_key.empty())) {
    throw InvalidArgument("serve needs --tls-cert and --tls-key (or --insecure)");
  }
  RegistryConfig rc;
  rc.server_address = cmd.public_server_address;
  rc.token_ttl_s = static_cast<int64_t>(cmd.token_ttl_hours * 3600);
  if (!cmd.tls_ca.empty()) rc.server_ca_pem = ReadFile(cmd.tls_ca);

  // One serve per state: the rotations and pushes below assume it.
  StateStore state(cmd.state_dir);
  std::unique_ptr<FileLock> serve_lock = FileLock::TryLock(state.serve_lock_path());
  if (!serve_lock) {
    throw FailedPrecondition("another `stip-developer serve` is running on the state " +
                             state.dir() + " (it holds " + state.serve_lock_path() + ")");
  }

  // 1. The default group's instance for this model: found in the state, or made now.
  UserRegistry users(state);
  InstanceGroups groups(state);
  bool key_created = false;
  auto signing_key = std::make_shared<const auth::SigningKey>(
      auth::SigningKey::LoadOrCreate(state.token_key_path(), &key_created));
  rc.signing_key = signing_key;
  spdlog::info("{} token signing key {} ({})", key_created ? "made" : "using",
               signing_key->public_key().key_id(), state.token_key_path());
  TransformOptions topt;
  topt.max_shard_bytes =
      cmd.shard_gib > 0 ? static_cast<uint64_t>(cmd.shard_gib * (1ull << 30)) : 0;
  StateStore::Ensured inst =
      state.EnsureInstanceForModel(cmd.model_dir, topt, groups.ReservedInstances());
  const std::string id = inst.info.instance_id;
  if (inst.created) {
    spdlog::info("made instance {} ({}) of {}: {} tensors, {:.1f} MiB written in {:.2f} s", id,
                 inst.info.model_type, cmd.model_dir, inst.stats.tensors,
                 inst.stats.bytes_written / 1048576.0, inst.stats.seconds);
  } else {
    spdlog::info("using instance {} ({}, made {}) from {}", id, inst.info.model_type,
                 inst.info.created_at, state.dir());
  }

  InstallSignalHandlers();

  std::unique_ptr<MetricsEndpoint> metrics;
  std::unique_ptr<DeveloperMetrics> developer_metrics;
  if (!cmd.metrics_listen.empty()) {
    metrics = std::make_unique<MetricsEndpoint>();
    developer_metrics = std::make_unique<DeveloperMetrics>(*metrics);
    const int metrics_port = metrics->Listen(cmd.metrics_listen);
    std::printf("stip-developer metrics on http://%s/metrics\n",
                WithPort(cmd.metrics_listen, metrics_port).c_str());
  }

  // 2. Every server gets every instance users are served by: the default
  // group's, the other groups' and pinned ones (rotations in progress are
  // the rollout's, below).
  TlsOptions push_tls;
  push_tls.insecure = cmd.insecure;
  push_tls.ca_file = cmd.tls_ca;
  push_tls.cert_file = cmd.tls_cert;
  push_tls.key_file = cmd.tls_key;
  push_tls.server_name_override = cmd.tls_server_name;
  RetryOptions retry;
  retry.max_seconds = cmd.push_timeout_s;
  retry.stop = &g_stop;
  std::vector<std::string> serving = {id};
  {
    const std::set<std::string> retiring = groups.RetiringInstances();
    std::set<std::string> others;
    for (const GroupRecord& g : groups.Groups()) others.insert(g.instance);
    for (const UserRecord& u : users.List()) others.insert(u.instance);
    for (const std::string& other : others) {
      if (other.empty() || other == id || retiring.count(other)) continue;
      if (!state.HasInstance(other)) {
        spdlog::error("instance {} (of a group or a pinned user) is not in the state", other);
        continue;
      }
      serving.push_back(other);
    }
  }
  for (const std::string& server : cmd.servers) {
    for (const std::string& instance : serving) {
      PushResult r;
      try {
        r = EnsureModelOnServer(server, push_tls, instance, state.ServerDir(instance), {}, retry);
      } catch (const Error&) {
        if (!g_stop.load()) throw;
        spdlog::info("interrupted while pushing to {}", server);
        return 0;
      }
      if (developer_metrics) developer_metrics->Push(r.already_stored);
      if (r.already_stored) {
        spdlog::info("server {} already has instance {}", server, instance);
      } else {
        spdlog::info("pushed instance {} to {}: {} files, {:.1f} MiB in {:.2f} s", instance, server,
                     r.files, r.bytes / 1048576.0, r.seconds);
      }
      if (g_stop.load()) return 0;
    }
  }
  // Every server learns the key that signs our tokens, and what is revoked.
  AccessSync access_sync(state, users, signing_key->public_key().pem(), cmd.servers, push_tls);
  access_sync.SyncOnce(/*strict=*/true);
  // Rotations and new groups in progress move on (and go on in the background).
  InstanceRollout rollout(state, users, signing_key->public_key().pem(), cmd.servers, push_tls);
  if (int pending = rollout.RunOnce(); pending > 0) {
    spdlog::info("{} rotation(s) in progress", pending);
  }

  // 3. The Registry.
  RegistryService registry_service(&state, &users, rc);
  std::optional<MeteredRegistry> metered;
  if (developer_metrics) metered.emplace(&registry_service, developer_metrics.get());
  grpc::Service* registry = metered ? static_cast<grpc::Service*>(&*metered)
                                    : static_cast<grpc::Service*>(&registry_service);
  ServerSetup setup;
  setup.address = cmd.listen;
  setup.name = "stip-developer registry";
  setup.tls.insecure = cmd.insecure;
  setup.tls.cert_file = cmd.tls_cert;
  setup.tls.key_file = cmd.tls_key;
  int port = 0;
  std::unique_ptr<grpc::Server> server =
      StartServer(setup, {registry}, &port, {v1::Registry::service_full_name()});
  std::string bound = WithPort(cmd.listen, port);
  spdlog::info("Registry serving instance {} (users go to server {}) on {}", id, rc.server_address,
               bound);
  std::printf("stip-developer listening on %s\n", bound.c_str());
  std::fflush(stdout);
  // Rotations move on, then the servers' access records, every --access-sync-s.
  PeriodicTask sync(cmd.access_sync_s, [&] {
    rollout.RunOnce();
    access_sync.SyncOnce();
  });

  WaitForSignal();
  spdlog::info("shutting down");
  sync.Stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server->Wait();
  return 0;
}

}  // namespace stip
