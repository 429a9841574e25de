// Continuous batching of session steps: every loaded model has one scheduler
// thread that takes the steps pending from all its sessions and runs them as
// ONE ServerModel::Forward (up to max_batch sequences, each against its own KV
// cache), then hands each session its logits. Sessions (gRPC reactors) only
// enqueue; they never wait for the model.
//
// An encoder model (BERT, ViT) has the same thread for Encode calls: it takes
// the pending calls' sequences together (whole calls, up to max_batch
// sequences unless one call alone has more) and runs them through
// EncoderServer::Encode in padded batches of at most max_batch sequences.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/rpc/logits_transport.h"

namespace stip {
class EncoderServer;
class KvCache;
class ServerModel;
}  // namespace stip

namespace stip {

// Counters for monitoring and tests (shared by all schedulers of a daemon).
struct SchedulerCounters {
  std::atomic<uint64_t> steps{0};             // steps completed (ok or failed)
  std::atomic<uint64_t> forwards{0};          // Forward calls that succeeded
  std::atomic<uint64_t> batched_forwards{0};  // ... of them with more than one sequence
  std::atomic<uint64_t> fallbacks{0};         // batches re-run one by one after a failure
  std::atomic<uint64_t> largest_batch{0};
  // Time spent in ServerModel::Forward (including the one-by-one fallback
  // runs), nanoseconds: the server's compute, without (de)serialization.
  std::atomic<uint64_t> forward_ns{0};
  // For the metrics (server/server_metrics.h):
  std::atomic<int64_t> queued{0};            // steps waiting in the schedulers' queues
  std::atomic<uint64_t> positions_in{0};     // x' positions run through Forward (tokens in)
  std::atomic<uint64_t> logits_rows_out{0};  // o' rows computed for the clients (tokens out)
  // Called after every successful batched Forward with the batch's size and
  // its time (seconds). Set before any scheduler starts; may be empty.
  std::function<void(size_t batch, double seconds)> on_batch;
};

struct StepOutcome {
  bool ok = false;
  EncodedLogits logits;  // o' of the step in its format, on the host, when ok
  ErrorCode code = ErrorCode::kInternal;
  std::string message;  // when !ok
};

struct StepWork {
  at::Tensor hidden;  // validated x' [T >= 1, hidden_size]
  std::shared_ptr<KvCache> cache;
  bool all_logits = false;
  LogitsFormat logits_format;  // encoded on the model's device, before the copy to the host
  // Called once, on the scheduler thread, after the step ran (or failed).
  // Must not throw and must not block on the scheduler.
  std::function<void(StepOutcome)> done;
};

struct EncodeOutcome {
  bool ok = false;
  std::vector<at::Tensor> outputs;  // o' per sequence, FP32 on the host, when ok
  ErrorCode code = ErrorCode::kInternal;
  std::string message;  // when !ok
};

struct EncodeWork {
  std::vector<at::Tensor> inputs;  // validated x' [T_i, hidden_size] per sequence
  // Called once, on the scheduler thread. Must not throw or block on the scheduler.
  std::function<void(EncodeOutcome)> done;
};

struct SchedulerOptions {
  int max_batch = 16;  // sequences per Forward
  // How long to hold a step back for the steps of other open sessions of the
  // model to join its batch (0: never wait; a lone session never waits).
  int batch_wait_us = 0;
};

class BatchScheduler {
 public:
  BatchScheduler(const ServerModel& model, SchedulerOptions options,
                 std::shared_ptr<SchedulerCounters> counters, std::string name);
  BatchScheduler(const EncoderServer& encoder, SchedulerOptions options,
                 std::shared_ptr<SchedulerCounters> counters, std::string name);
  // Fails whatever is still queued (UNAVAILABLE) and joins the thread.
  ~BatchScheduler();
  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  // Queues a step; returns at once. A session has at most one step queued.
  void Submit(StepWork work);
  // Queues an Encode call (encoder models only); returns at once.
  void SubmitEncode(EncodeWork work);
  // Open sessions of the model (the batch window waits only for them).
  void SessionOpened();
  void SessionClosed();

 private:
  void Run();
  void RunBatch(std::vector<StepWork>& batch);
  void RunEncodeBatch(std::vector<EncodeWork>& batch);

  const ServerModel* model_ = nullptr;      // causal models
  const EncoderServer* encoder_ = nullptr;  // encoders
  const SchedulerOptions options_;
  std::shared_ptr<SchedulerCounters> counters_;
  const std::string name_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StepWork> queue_;
  std::deque<EncodeWork> encode_queue_;
  int sessions_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace stip
