#include "server/batch_scheduler.h"

#include <c10/core/InferenceMode.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <exception>

#include "common/engine/causal_lm.h"
#include "common/engine/cpu_runtime.h"
#include "common/engine/encoder.h"

namespace stip {

namespace {

StepOutcome Failure(ErrorCode code, std::string message) {
  StepOutcome o;
  o.code = code;
  o.message = std::move(message);
  return o;
}

// The outcome for whatever is being handled (call inside a catch block).
StepOutcome CurrentFailure() {
  try {
    throw;
  } catch (const Error& e) {
    return Failure(e.code(), e.what());
  } catch (const std::exception& e) {
    return Failure(ErrorCode::kInternal, std::string("forward pass failed: ") + e.what());
  } catch (...) {
    return Failure(ErrorCode::kInternal, "forward pass failed");
  }
}

// Adds the time from construction to destruction to a counter (ns).
class ForwardTimer {
 public:
  explicit ForwardTimer(std::atomic<uint64_t>& total)
      : total_(total), start_(std::chrono::steady_clock::now()) {}
  ~ForwardTimer() {
    total_ += static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now() - start_)
                                        .count());
  }
  ForwardTimer(const ForwardTimer&) = delete;
  ForwardTimer& operator=(const ForwardTimer&) = delete;

 private:
  std::atomic<uint64_t>& total_;
  const std::chrono::steady_clock::time_point start_;
};

template <typename Work, typename Outcome>
void Deliver(Work& work, Outcome outcome) {
  try {
    work.done(std::move(outcome));
  } catch (const std::exception& e) {
    spdlog::error("scheduler: a step's completion failed: {}", e.what());
  } catch (...) {
    spdlog::error("scheduler: a step's completion failed");
  }
}

EncodeOutcome EncodeFailure(const StepOutcome& f) {
  EncodeOutcome o;
  o.code = f.code;
  o.message = f.message;
  return o;
}

void NoteBatch(SchedulerCounters& c, size_t size) {
  c.forwards++;
  if (size > 1) c.batched_forwards++;
  uint64_t largest = c.largest_batch.load();
  while (size > largest && !c.largest_batch.compare_exchange_weak(largest, size)) {
  }
}

}  // namespace

BatchScheduler::BatchScheduler(const ServerModel& model, SchedulerOptions options,
                               std::shared_ptr<SchedulerCounters> counters, std::string name)
    : model_(&model),
      options_(options),
      counters_(counters ? std::move(counters) : std::make_shared<SchedulerCounters>()),
      name_(std::move(name)) {
  ConfigureCpuRuntime();  // once per process: intra-op threads, BLAS kernels
  thread_ = std::thread([this] { Run(); });
}

BatchScheduler::BatchScheduler(const EncoderServer& encoder, SchedulerOptions options,
                               std::shared_ptr<SchedulerCounters> counters, std::string name)
    : encoder_(&encoder),
      options_(options),
      counters_(counters ? std::move(counters) : std::make_shared<SchedulerCounters>()),
      name_(std::move(name)) {
  ConfigureCpuRuntime();
  thread_ = std::thread([this] { Run(); });
}

BatchScheduler::~BatchScheduler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.get_id() == std::this_thread::get_id()) {
    thread_.detach();  // the last owner let go from a completion callback
  } else if (thread_.joinable()) {
    thread_.join();
  }
}

void BatchScheduler::Submit(StepWork work) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_) {
      queue_.push_back(std::move(work));
      work.done = nullptr;
      counters_->queued++;
    }
  }
  if (work.done) {
    Deliver(work, Failure(ErrorCode::kFailedPrecondition, "the model is being unloaded"));
    return;
  }
  cv_.notify_all();
}

void BatchScheduler::SubmitEncode(EncodeWork work) {
  if (!encoder_) {
    Deliver(work, EncodeFailure(Failure(ErrorCode::kFailedPrecondition,
                                        "the model is not an encoder: it serves sessions")));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_) {
      encode_queue_.push_back(std::move(work));
      work.done = nullptr;
    }
  }
  if (work.done) {
    Deliver(work,
            EncodeFailure(Failure(ErrorCode::kFailedPrecondition, "the model is being unloaded")));
    return;
  }
  cv_.notify_all();
}

void BatchScheduler::SessionOpened() {
  std::lock_guard<std::mutex> lock(mu_);
  ++sessions_;
}

void BatchScheduler::SessionClosed() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (sessions_ > 0) --sessions_;
  }
  cv_.notify_all();  // a batch window may be waiting for this session
}

void BatchScheduler::Run() {
  InitComputeThread();
  c10::InferenceMode inference_mode;
  const size_t max_batch = static_cast<size_t>(std::max(1, options_.max_batch));
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty() || !encode_queue_.empty(); });
    if (stop_) break;
    if (!encode_queue_.empty()) {
      // Whole calls, together up to max_batch sequences (a larger call alone).
      std::vector<EncodeWork> calls;
      size_t sequences = 0;
      while (!encode_queue_.empty() &&
             (calls.empty() || sequences + encode_queue_.front().inputs.size() <= max_batch)) {
        sequences += encode_queue_.front().inputs.size();
        calls.push_back(std::move(encode_queue_.front()));
        encode_queue_.pop_front();
      }
      lock.unlock();
      RunEncodeBatch(calls);
      calls.clear();
      lock.lock();
      continue;
    }
    if (options_.batch_wait_us > 0) {
      // Wait (briefly) for the other open sessions' steps to join this batch.
      auto enough = [&] {
        const size_t want = std::min(max_batch, static_cast<size_t>(std::max(1, sessions_)));
        return stop_ || queue_.size() >= want;
      };
      cv_.wait_until(
          lock,
          std::chrono::steady_clock::now() + std::chrono::microseconds(options_.batch_wait_us),
          enough);
      if (stop_) break;
    }
    std::vector<StepWork> batch;
    while (!queue_.empty() && batch.size() < max_batch) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
      counters_->queued--;
    }
    lock.unlock();
    RunBatch(batch);
    batch.clear();  // drop tensors and caches before sleeping
    lock.lock();
  }
  std::deque<StepWork> left;
  left.swap(queue_);
  counters_->queued -= static_cast<int64_t>(left.size());
  std::deque<EncodeWork> left_encodes;
  left_encodes.swap(encode_queue_);
  lock.unlock();
  const StepOutcome down = Failure(ErrorCode::kFailedPrecondition, "the server is shutting down");
  for (StepWork& w : left) Deliver(w, down);
  for (EncodeWork& w : left_encodes) Deliver(w, EncodeFailure(down));
}

void BatchScheduler::RunBatch(std::vector<StepWork>& batch) {
  std::vector<SequenceStep> steps;
  steps.reserve(batch.size());
  for (const StepWork& w : batch) steps.push_back({w.hidden, w.cache.get(), w.all_logits});
  // Forward, then each step's logits in its session's format: encoded on the
  // model's device, so that only the bytes the format keeps cross to the
  // host. Both are timed into counters_->forward_ns (failed runs too): on an
  // accelerator the time counts once the logits are on the host (the answer
  // needs them there; this also waits for the kernels to finish).
  // A failed encoding fails only its step (the client rolls the step back).
  auto encode = [&](size_t i, const at::Tensor& logits) {
    StepOutcome outcome;
    try {
      outcome.logits = EncodeLogits(logits, batch[i].logits_format);
      outcome.ok = true;
    } catch (...) {
      outcome = CurrentFailure();
    }
    return outcome;
  };
  std::vector<StepOutcome> outcomes;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    ForwardTimer timer(counters_->forward_ns);
    std::vector<at::Tensor> logits = model_->Forward(steps);
    for (size_t i = 0; i < batch.size(); ++i) outcomes.push_back(encode(i, logits[i]));
  } catch (...) {
    StepOutcome failure = CurrentFailure();
    if (batch.size() == 1) {
      counters_->steps++;
      Deliver(batch[0], std::move(failure));
      return;
    }
    // One bad input must not fail the others: run them one by one. (Forward
    // commits nothing when it throws.)
    spdlog::warn("{}: batched forward of {} sequences failed ({}); running them one by one", name_,
                 batch.size(), failure.message);
    counters_->fallbacks++;
    for (size_t i = 0; i < batch.size(); ++i) {
      StepOutcome outcome;
      try {
        ForwardTimer timer(counters_->forward_ns);
        std::vector<at::Tensor> logits = model_->Forward({steps[i]});
        counters_->forwards++;
        outcome = encode(i, logits.at(0));
      } catch (...) {
        outcome = CurrentFailure();
      }
      counters_->steps++;
      Deliver(batch[i], std::move(outcome));
    }
    return;
  }
  NoteBatch(*counters_, batch.size());
  for (const StepWork& w : batch) {
    counters_->positions_in += static_cast<uint64_t>(w.hidden.size(0));
    counters_->logits_rows_out += w.all_logits ? static_cast<uint64_t>(w.hidden.size(0)) : 1;
  }
  if (counters_->on_batch) {
    counters_->on_batch(
        batch.size(), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    counters_->steps++;
    Deliver(batch[i], std::move(outcomes[i]));
  }
}

void BatchScheduler::RunEncodeBatch(std::vector<EncodeWork>& calls) {
  const size_t max_batch = static_cast<size_t>(std::max(1, options_.max_batch));
  // Runs `inputs` in padded batches of at most max_batch sequences; results
  // as FP32 on the host (timed like Forward, until they are there).
  auto encode = [&](const std::vector<at::Tensor>& inputs) {
    std::vector<at::Tensor> out;
    out.reserve(inputs.size());
    for (size_t begin = 0; begin < inputs.size(); begin += max_batch) {
      const size_t end = std::min(inputs.size(), begin + max_batch);
      std::vector<at::Tensor> part(inputs.begin() + static_cast<std::ptrdiff_t>(begin),
                                   inputs.begin() + static_cast<std::ptrdiff_t>(end));
      ForwardTimer timer(counters_->forward_ns);
      for (at::Tensor& o : encoder_->Encode(part)) {
        out.push_back(o.to(at::kCPU, at::kFloat).contiguous());
      }
      NoteBatch(*counters_, part.size());
    }
    return out;
  };
  std::vector<at::Tensor> all;
  for (const EncodeWork& w : calls) all.insert(all.end(), w.inputs.begin(), w.inputs.end());
  std::vector<at::Tensor> outputs;
  try {
    outputs = encode(all);
  } catch (...) {
    const StepOutcome failure = CurrentFailure();
    if (calls.size() == 1) {
      counters_->steps++;
      Deliver(calls[0], EncodeFailure(failure));
      return;
    }
    // One bad call must not fail the others: run them one by one.
    spdlog::warn("{}: batched encode of {} calls failed ({}); running them one by one", name_,
                 calls.size(), failure.message);
    counters_->fallbacks++;
    for (EncodeWork& w : calls) {
      EncodeOutcome outcome;
      try {
        outcome.outputs = encode(w.inputs);
        outcome.ok = true;
      } catch (...) {
        outcome = EncodeFailure(CurrentFailure());
      }
      counters_->steps++;
      Deliver(w, std::move(outcome));
    }
    return;
  }
  size_t next = 0;
  for (EncodeWork& w : calls) {
    EncodeOutcome outcome;
    outcome.ok = true;
    outcome.outputs.assign(outputs.begin() + static_cast<std::ptrdiff_t>(next),
                           outputs.begin() + static_cast<std::ptrdiff_t>(next + w.inputs.size()));
    next += w.inputs.size();
    counters_->steps++;
    Deliver(w, std::move(outcome));
  }
}

}  // namespace stip
