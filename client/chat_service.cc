#include "client/chat_service.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "client/bundle_refresh.h"
#include "client/bundle_store.h"
#include "client/generator.h"
#include "client/remote_session.h"
#include "common/rpc/status.h"

namespace stip {

namespace {

// The sampling settings a request gave (0: the model's default).
UserSampling RequestSampling(const v1::GenerateRequest& req) {
  UserSampling u;
  const v1::SamplingParams& s = req.sampling();
  u.greedy = s.greedy();
  u.seed = s.has_seed();
  u.temperature = s.temperature() != 0;
  u.top_k = s.top_k() != 0;
  u.top_p = s.top_p() != 0;
  u.repetition_penalty = s.repetition_penalty() != 0;
  return u;
}

GenerateOptions ToOptions(const v1::GenerateRequest& req, const ChatServiceOptions& service) {
  GenerateOptions o;
  if (req.max_new_tokens() < 0) throw InvalidArgument("max_new_tokens must be >= 0 (0: default)");
  o.max_new_tokens =
      req.max_new_tokens() == 0 ? service.default_max_new_tokens : req.max_new_tokens();
  if (o.max_new_tokens > service.max_new_tokens_limit) {
    throw InvalidArgument("max_new_tokens must be <= " +
                          std::to_string(service.max_new_tokens_limit));
  }
  const v1::SamplingParams& s = req.sampling();
  o.sampling.greedy = s.greedy();
  o.sampling.temperature = s.temperature() == 0 ? 1.0 : s.temperature();
  o.sampling.top_k = s.top_k();
  o.sampling.top_p = s.top_p() == 0 ? 1.0 : s.top_p();
  o.sampling.repetition_penalty = s.repetition_penalty() == 0 ? 1.0 : s.repetition_penalty();
  if (s.has_seed()) o.sampling.seed = s.seed();
  o.stop.assign(req.stop().begin(), req.stop().end());
  ValidateGenerateOptions(o);
  return o;
}

// While a Chat call runs: once its caller has gone (cancelled, or its
// deadline passed), interrupts the step in flight on the stip server, so the
// server stops working for it at once instead of after the step (a long
// prompt's prefill, say). It goes on interrupting until the call returns, so
// that a session opened meanwhile (a reconnect) is interrupted too. The
// generator checks for cancellation between steps.
class CallerWatch {
 public:
  CallerWatch(grpc::ServerContext* context, Generator& generator)
      : thread_([this, context, &generator] {
          std::unique_lock<std::mutex> lock(mu_);
          while (!done_) {
            if (context->IsCancelled()) generator.Interrupt();  // also once its deadline passed
            cv_.wait_for(lock, std::chrono::milliseconds(20));
          }
        }) {}
  ~CallerWatch() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  CallerWatch(const CallerWatch&) = delete;
  CallerWatch& operator=(const CallerWatch&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace

ChatService::ChatService(ChatServiceOptions options) : options_(std::move(options)) {
  if (!options_.connection && (!options_.bundle || !options_.make_backend)) {
    throw InvalidArgument("the Chat service needs a bundle and a backend factory");
  }
}

ChatService::~ChatService() = default;

std::unique_ptr<Generator> ChatService::NewGenerator(uint64_t* generation) const {
  std::unique_ptr<Generator> g;
  if (options_.connection) {
    ClientConnection::View v = options_.connection->Current();
    *generation = v.generation;
    g = std::make_unique<Generator>(v.bundle, v.make_backend());
  } else {
    g = std::make_unique<Generator>(options_.bundle, options_.make_backend());
  }
  g->SetReconnectPolicy(options_.reconnect);
  if (options_.chat_template && g->bundle().chat_template()) g->EnableChat(options_.system_prompt);
  return g;
}

size_t ChatService::conversations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return conversations_.size();
}

std::shared_ptr<ChatService::Conversation> ChatService::Acquire(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = conversations_.find(id);
  if (it != conversations_.end()) return it->second;
  while (conversations_.size() >= options_.max_conversations) {
    // Drop the least recently used conversation that no request holds.
    auto victim = conversations_.end();
    for (auto c = conversations_.begin(); c != conversations_.end(); ++c) {
      if (c->second.use_count() > 1) continue;  // a request holds it
      if (victim == conversations_.end() || c->second->last_used < victim->second->last_used) {
        victim = c;
      }
    }
    if (victim == conversations_.end()) {
      throw ResourceExhausted("too many conversations in progress (limit " +
                              std::to_string(options_.max_conversations) + ")");
    }
    conversations_.erase(victim);
  }
  auto c = std::make_shared<Conversation>();
  c->generator = NewGenerator(&c->generation);
  c->last_used = std::chrono::steady_clock::now();
  conversations_[id] = c;
  return c;
}

grpc::Status ChatService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                   grpc::ServerWriter<v1::GenerateResponse>* writer) {
  struct Active {
    std::atomic<int>& n;
    explicit Active(std::atomic<int>& c) : n(c) { ++n; }
    ~Active() { --n; }
  } active(active_);
  try {
    if (request->prompt().size() > options_.max_prompt_bytes) {
      throw ResourceExhausted("prompt of " + std::to_string(request->prompt().size()) +
                              " bytes exceeds the prompt size limit of " +
                              std::to_string(options_.max_prompt_bytes) +
                              " bytes (stip-client serve --max-prompt-bytes)");
    }
    GenerateOptions options = ToOptions(*request, options_);
    bool write_failed = false;
    options.cancelled = [&] { return write_failed || context->IsCancelled(); };
    std::vector<int64_t> leftover_ids;
    auto on_piece = [&](const std::string& piece, const std::vector<int64_t>& ids) {
      if (piece.empty()) {
        leftover_ids.insert(leftover_ids.end(), ids.begin(), ids.end());
        return;
      }
      v1::GenerateResponse resp;
      resp.set_text(piece);
      for (int64_t id : ids) resp.add_token_ids(id);
      if (!write_failed && !writer->Write(resp)) write_failed = true;
    };

    const std::string& id = request->conversation_id();
    std::shared_ptr<Conversation> conversation;
    std::unique_ptr<Generator> one_off;
    std::unique_lock<std::mutex> held;
    Generator* gen = nullptr;
    uint64_t one_off_generation = 0;
    uint64_t* generation = &one_off_generation;
    if (id.empty()) {
      one_off = NewGenerator(&one_off_generation);
      gen = one_off.get();
    } else {
      conversation = Acquire(id);
      held = std::unique_lock<std::mutex>(conversation->mu, std::try_to_lock);
      if (!held.owns_lock()) {
        throw Aborted("conversation \"" + id.substr(0, 64) + "\" is busy with another request");
      }
      gen = conversation->generator.get();
      generation = &conversation->generation;
    }
    ApplyGenerationConfig(gen->bundle().generation_config(), RequestSampling(*request),
                          &options.sampling);
    ValidateGenerateOptions(options);
    std::optional<CallerWatch> watch;
    watch.emplace(context, *gen);
    GenerateResult r = options_.connection ? GenerateTurn(*options_.connection, *gen, generation,
                                                          request->prompt(), options, on_piece)
                                           : gen->Generate(request->prompt(), options, on_piece);
    watch.reset();
    if (conversation) conversation->last_used = std::chrono::steady_clock::now();
    if (write_failed || context->IsCancelled()) {
      return ToStatus(Cancelled("the request was cancelled"));
    }
    v1::GenerateResponse done;
    for (int64_t t : leftover_ids) done.add_token_ids(t);
    done.set_done(true);
    done.set_finish_reason(r.finish_reason);
    done.set_prompt_tokens(static_cast<int32_t>(r.prompt_ids.size()));
    done.set_completion_tokens(static_cast<int32_t>(r.token_ids.size()));
    writer->Write(done);
    spdlog::info("chat: {} prompt + {} new tokens ({}), prefill {:.1f} ms, {:.1f} tokens/s{}{}",
                 r.prompt_ids.size(), r.token_ids.size(), r.finish_reason, r.prefill_seconds * 1e3,
                 r.decode_seconds > 0 ? (r.token_ids.size() - 1) / r.decode_seconds : 0.0,
                 id.empty() ? "" : ", conversation context " + std::to_string(r.context_length),
                 gen->chat_mode()
                     ? "; chat template: conversation of " + std::to_string(r.conversation_length) +
                           " tokens, " + std::to_string(r.reused_positions) +
                           " reused from the session's cache, " +
                           std::to_string(r.prefilled_positions) + " prefilled"
                     : std::string());
    return grpc::Status::OK;
  } catch (...) {
    grpc::Status status = CurrentExceptionToStatus();
    spdlog::warn("chat: {}", status.error_message());
    return status;
  }
}

}  // namespace stip
