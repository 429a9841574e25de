#include "client/generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "client/remote_session.h"
#include "common/chat/chat_template.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/tokenizer/tokenizer.h"

namespace stip {

namespace {

// Ids of the context given to the detokenizer before a turn's first new
// token, so that the token decodes as it does after that context
// (SentencePiece's leading space).
constexpr size_t kDecoderContext = 64;

// Holds back text that could be the start of a stop string, and finds the
// first complete one.
class StopGate {
 public:
  explicit StopGate(const std::vector<std::string>& stops) : stops_(stops) {}

  // Adds `piece`; returns the text that can be shown. `*stopped`: a stop
  // string is complete (the returned text ends where it begins).
  std::string Add(const std::string& piece, bool* stopped) {
    text_ += piece;
    size_t first = std::string::npos;
    for (const std::string& s : stops_) first = std::min(first, text_.find(s, released_));
    if (first != std::string::npos) {
      *stopped = true;
      return Release(first);
    }
    size_t hold = text_.size();
    for (const std::string& s : stops_) {
      const size_t from = text_.size() - std::min(text_.size() - released_, s.size() - 1);
      for (size_t i = from; i < text_.size(); ++i) {
        if (s.compare(0, text_.size() - i, text_, i, text_.size() - i) == 0) {
          hold = std::min(hold, i);
          break;
        }
      }
    }
    *stopped = false;
    return Release(hold);
  }

  // The end of the answer: whatever was held back, unless it completes a stop string.
  std::string Finish(const std::string& tail, bool* stopped) {
    std::string out = Add(tail, stopped);
    if (!*stopped) out += Release(text_.size());
    return out;
  }

 private:
  std::string Release(size_t end) {
    std::string out = text_.substr(released_, end - released_);
    released_ = end;
    return out;
  }

  const std::vector<std::string>& stops_;
  std::string text_;
  size_t released_ = 0;
};

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void ValidateGenerateOptions(const GenerateOptions& o) {
  const SamplingOptions& s = o.sampling;
  if (o.max_new_tokens < 1) throw InvalidArgument("max_new_tokens must be >= 1");
  if (!(s.temperature >= 0) || !std::isfinite(s.temperature)) {
    throw InvalidArgument("temperature must be a finite number >= 0");
  }
  if (s.top_k < 0) throw InvalidArgument("top_k must be >= 0");
  if (!(s.top_p > 0 && s.top_p <= 1)) throw InvalidArgument("top_p must be in (0, 1]");
  if (!(s.repetition_penalty > 0) || !std::isfinite(s.repetition_penalty)) {
    throw InvalidArgument("repetition_penalty must be a finite number > 0");
  }
  for (const std::string& stop : o.stop) {
    if (stop.empty()) throw InvalidArgument("stop strings must not be empty");
  }
}

Generator::Generator(std::shared_ptr<const ClientBundle> bundle,
                     std::unique_ptr<LogitsBackend> backend)
    : bundle_(std::move(bundle)), backend_(std::move(backend)) {
  if (!bundle_ || !backend_) throw InvalidArgument("a Generator needs a bundle and a backend");
  permuter_ = std::make_unique<ClientPermuter>(bundle_->keys().p, bundle_->keys().p_c);
}

Generator::~Generator() {
  try {
    backend_->Close();
  } catch (...) {
  }
}

void Generator::Reset() {
  history_.clear();
  fed_ = 0;
  backend_->Close();
  messages_ = nlohmann::ordered_json::array();
  if (chat_mode_ && !system_prompt_.empty()) {
    messages_.push_back({{"role", "system"}, {"content", system_prompt_}});
  }
}

void Generator::EnableChat(const std::string& system_prompt) {
  const ChatTemplate* t = bundle_->chat_template();
  if (!t) {
    throw FailedPrecondition(bundle_->dir() +
                             ": the model has no chat template (chat_template.jinja or "
                             "tokenizer_config.json's chat_template)");
  }
  chat_mode_ = true;
  system_prompt_ = system_prompt;
  messages_ = nlohmann::ordered_json::array();
  if (!system_prompt_.empty()) {
    messages_.push_back({{"role", "system"}, {"content", system_prompt_}});
  }
  chat_eos_.clear();
  const std::string eos = t->token("eos_token");
  if (!eos.empty()) {
    EncodeOptions special;
    special.allow_special = true;
    special.add_special_tokens = false;
    std::vector<int64_t> ids = bundle_->tokenizer().Encode(eos, special);
    if (ids.size() == 1 && bundle_->tokenizer().IsSpecial(ids[0])) chat_eos_ = ids;
  }
}

GenerateResult Generator::GenerateConversation(const std::vector<int64_t>& conversation,
                                               const GenerateOptions& options,
                                               const PieceCallback& on_piece) {
  if (conversation.empty()) throw InvalidArgument("the conversation encodes to no tokens");
  size_t common = 0;
  while (common < history_.size() && common < conversation.size() &&
         history_[common] == conversation[common]) {
    ++common;
  }
  // At least one position is stepped: its logits give the first new token.
  if (common == conversation.size()) --common;
  if (common < history_.size()) {
    history_.resize(common);
    if (fed_ > static_cast<int64_t>(common)) {
      if (backend_->is_open()) backend_->Truncate(static_cast<int64_t>(common));
      fed_ = static_cast<int64_t>(common);
    }
  }
  const int64_t reused = backend_->is_open() ? fed_ : 0;
  std::vector<int64_t> suffix(conversation.begin() + static_cast<std::ptrdiff_t>(common),
                              conversation.end());
  GenerateResult r = GenerateIds(suffix, options, on_piece);
  r.reused_positions = reused;
  r.conversation_length = static_cast<int64_t>(conversation.size());
  return r;
}

void Generator::Connect() { EnsureSession(); }

void Generator::Rebind(std::shared_ptr<const ClientBundle> bundle,
                       std::unique_ptr<LogitsBackend> backend) {
  if (!bundle || !backend) throw InvalidArgument("a Generator needs a bundle and a backend");
  if (bundle->hidden_size() != bundle_->hidden_size() ||
      bundle->vocab_size() != bundle_->vocab_size()) {
    throw FailedPrecondition("the new client bundle is of another model (hidden size " +
                             std::to_string(bundle->hidden_size()) + ", vocabulary " +
                             std::to_string(bundle->vocab_size()) + ")");
  }
  try {
    backend_->Close();
  } catch (...) {
  }
  bundle_ = std::move(bundle);
  {
    std::lock_guard<std::mutex> lock(backend_mu_);
    backend_ = std::move(backend);
  }
  permuter_ = std::make_unique<ClientPermuter>(bundle_->keys().p, bundle_->keys().p_c);
  fed_ = 0;
}

void Generator::Interrupt() {
  std::lock_guard<std::mutex> lock(backend_mu_);
  backend_->Interrupt();
}

void Generator::EnsureSession() {
  if (backend_->is_open()) return;
  fed_ = 0;  // a new session's cache is empty: the conversation is sent again
  SessionInfo info = backend_->Open();
  had_session_ = true;
  if (info.hidden_size != bundle_->hidden_size() || info.vocab_size != bundle_->vocab_size()) {
    backend_->Close();
    throw FailedPrecondition(
        "the server's model has hidden size " + std::to_string(info.hidden_size) +
        " and vocabulary size " + std::to_string(info.vocab_size) + ", the bundle's " +
        std::to_string(bundle_->hidden_size()) + " and " + std::to_string(bundle_->vocab_size()));
  }
}

void Generator::WithReconnect(const GenerateOptions& options, const std::function<void()>& fn) {
  const bool may_reconnect = had_session_ && reconnect_.max_attempts > 0;
  int attempt = 0;
  while (true) {
    try {
      fn();
      if (attempt > 0) {
        ++reconnects_;
        if (reconnect_.notify) {
          reconnect_.notify("reconnected: new session " + backend_->info().session_id +
                            ", the conversation so far (" + std::to_string(fed_) +
                            " tokens) sent again");
        }
      }
      return;
    } catch (const Error& e) {
      const SessionLoss loss = ClassifySessionLoss(e, backend_->is_open());
      if (loss == SessionLoss::kNone || !may_reconnect) throw;
      fed_ = 0;
      ++attempt;
      if (attempt > reconnect_.max_attempts) {
        throw Error(e.code(),
                    std::string(e.what()) + " (gave up after " +
                        std::to_string(reconnect_.max_attempts) + " reconnect attempts)",
                    e.reason());
      }
      // The server ended an idle session: open a new one at once.
      const double delay = loss == SessionLoss::kExpired && attempt == 1
                               ? 0.0
                               : BackoffDelaySeconds(reconnect_, attempt, JitterDraw());
      if (reconnect_.notify) {
        char when[32];
        std::snprintf(when, sizeof when, "%.1f s", delay);
        reconnect_.notify(
            (loss == SessionLoss::kExpired ? "session expired: " : "server unavailable: ") +
            std::string(e.what()) + "; reconnecting in " + when + " (attempt " +
            std::to_string(attempt) + " of " + std::to_string(reconnect_.max_attempts) + ")");
      }
      if (!SleepUnlessCancelled(delay, options.cancelled)) throw;
    }
  }
}

at::Tensor Generator::StepPending(const GenerateOptions& options) {
  at::Tensor o_prime;
  WithReconnect(options, [&] {
    EnsureSession();
    const int64_t n = static_cast<int64_t>(history_.size()) - fed_;
    std::vector<int64_t> pending(history_.begin() + fed_, history_.end());
    at::Tensor x = bundle_->model().Embed(pending, fed_);
    at::Tensor x_prime = permuter_->Permute(x);
    o_prime = backend_->Step(x_prime, /*all_logits=*/false);
    fed_ += n;
  });
  return o_prime;
}

int64_t Generator::ContextLimit() const {
  int64_t limit = bundle_->max_positions();
  const int64_t server = backend_->info().max_context;
  if (server > 0 && (limit <= 0 || server < limit)) limit = server;
  return limit;
}

GenerateResult Generator::Generate(const std::string& prompt, const GenerateOptions& options,
                                   const PieceCallback& on_piece) {
  if (chat_mode_) {
    const ChatTemplate* t = bundle_->chat_template();
    nlohmann::ordered_json messages = messages_;
    messages.push_back({{"role", "user"}, {"content", prompt}});
    const std::vector<int64_t> ids = t->Encode(bundle_->tokenizer(), t->Render(messages, true));
    GenerateOptions o = options;
    if (o.stop_at_eos) extra_eos_ = chat_eos_;
    struct Clear {
      std::vector<int64_t>& v;
      ~Clear() { v.clear(); }
    } clear{extra_eos_};
    GenerateResult r = GenerateConversation(ids, o, on_piece);
    messages.push_back({{"role", "assistant"}, {"content", r.text}});
    messages_ = std::move(messages);
    return r;
  }
  EncodeOptions enc;
  enc.allow_special = false;
  enc.add_special_tokens = history_.empty();
  std::vector<int64_t> ids = bundle_->tokenizer().Encode(prompt, enc);
  if (ids.empty() && history_.empty()) {
    throw InvalidArgument("the prompt encodes to no tokens");
  }
  return GenerateIds(ids, options, on_piece);
}

GenerateResult Generator::GenerateIds(const std::vector<int64_t>& prompt_ids,
                                      const GenerateOptions& options,
                                      const PieceCallback& on_piece) {
  ValidateGenerateOptions(options);
  CheckSamplingExact(backend_->logits_format(), options.sampling);
  const int64_t vocab = bundle_->vocab_size();
  for (int64_t id : prompt_ids) {
    if (id < 0 || id >= vocab) {
      throw InvalidArgument("prompt token id " + std::to_string(id) + " is outside the vocabulary");
    }
  }
  if (prompt_ids.empty() && history_.empty()) throw InvalidArgument("the prompt is empty");
  Sampler sampler(options.sampling);

  GenerateResult r;
  r.prompt_ids = prompt_ids;
  const size_t turn_start = history_.size();
  history_.insert(history_.end(), prompt_ids.begin(), prompt_ids.end());

  const Tokenizer& tok = bundle_->tokenizer();
  StreamDecoder decoder(tok, /*skip_special=*/true);
  for (size_t i = history_.size() - std::min(history_.size(), kDecoderContext); i < history_.size();
       ++i) {
    decoder.Push(history_[i]);
  }
  StopGate gate(options.stop);
  std::vector<int64_t> unreported;  // generated ids not yet passed to the callback
  auto emit = [&](const std::string& piece, bool last) {
    if (piece.empty() && !(last && !unreported.empty())) return;
    r.text += piece;
    if (on_piece) on_piece(piece, unreported);
    unreported.clear();
  };
  const auto& eos = bundle_->eos_ids();
  bool stopped = false;
  bool prefill_done = false;
  try {
    WithReconnect(options, [this] { EnsureSession(); });
    if (prompt_ids.empty() && static_cast<int64_t>(history_.size()) == fed_) {
      throw InvalidArgument("the prompt is empty and the conversation has nothing new to continue");
    }
    const int64_t limit = ContextLimit();
    r.finish_reason = "length";
    for (int i = 0; i < options.max_new_tokens; ++i) {
      if (options.cancelled && options.cancelled()) {
        r.finish_reason = "cancelled";
        break;
      }
      const int64_t n = static_cast<int64_t>(history_.size()) - fed_;
      if (limit > 0 && fed_ + n > limit) {
        if (i == 0) {
          throw ResourceExhausted(
              "the conversation does not fit the context: " + std::to_string(fed_) + " + " +
              std::to_string(n) + " tokens exceed " + std::to_string(limit) +
              " positions (start a new conversation)");
        }
        r.finish_reason = "length";
        break;
      }
      const auto t0 = std::chrono::steady_clock::now();
      if (i == 0) r.prefilled_positions = n;
      at::Tensor o_prime = StepPending(options);
      at::Tensor logits = permuter_->Unpermute(o_prime[o_prime.size(0) - 1]);
      CheckTopKRowExact(logits, backend_->logits_format(), options.sampling);
      const int64_t next = sampler.Next(logits, history_);
      history_.push_back(next);
      (prefill_done ? r.decode_seconds : r.prefill_seconds) += Since(t0);
      prefill_done = true;
      if (options.stop_at_eos &&
          (std::find(eos.begin(), eos.end(), next) != eos.end() ||
           std::find(extra_eos_.begin(), extra_eos_.end(), next) != extra_eos_.end())) {
        r.finish_reason = "eos";
        break;
      }
      r.token_ids.push_back(next);
      unreported.push_back(next);
      emit(gate.Add(decoder.Push(next), &stopped), false);
      if (stopped) {
        r.finish_reason = "stop";
        break;
      }
    }
  } catch (...) {
    // Keep what the server has processed; drop the rest of the turn.
    history_.resize(std::max<size_t>(turn_start, static_cast<size_t>(fed_)));
    if (!backend_->is_open()) fed_ = 0;
    throw;
  }
  if (!stopped) {
    std::string tail = gate.Finish(decoder.Flush(), &stopped);
    if (stopped) r.finish_reason = "stop";
    emit(tail, true);
  } else {
    emit("", true);
  }
  r.context_length = static_cast<int64_t>(history_.size());
  return r;
}

}  // namespace stip
