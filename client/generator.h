// Text generation on the user's device through a LogitsBackend: tokenize,
// embed, permute (x' = x[..., p]), step the server's session, un-permute
// (o = o'[..., argsort(p_c)]), sample, detokenize.
//
// A Generator is one conversation. Its session and the server's KV cache are
// kept between turns: a turn's prompt ids are appended after everything the
// conversation already holds (the first turn's with the tokenizer's BOS, later
// turns' without special tokens), and the cache positions continue. Reset()
// forgets the conversation and starts a fresh session.
//
// What stays in the conversation after a turn:
//  - every id that was generated, including one that was sampled but whose
//    text a stop string cut off, and the EOS id that ended an answer (it is
//    fed, like any id, with the next turn);
//  - a cancelled answer stays as far as it was generated (its tokens were
//    shown; nothing is rolled back);
//  - a turn that fails (an error from the server, a full context) leaves the
//    conversation as it was before the turn, except for tokens the server has
//    already processed (and that the user has seen).
// If the session ends (the server restarted, the network broke), the next turn
// opens a new one and sends the whole conversation again as its prefill. With
// a ReconnectPolicy (client/reconnect.h) that happens within the turn too:
// the lost step is retried on a new session after a backoff delay, the answer
// goes on where it stopped.
//
// Chat mode (EnableChat, when the bundle has a chat template): the Generator
// keeps the conversation as messages (an optional system message, then user
// and assistant turns). A turn renders the whole conversation with the
// template (common/chat/chat_template.h: message content is plain text, the
// template's markers are special tokens), and only the suffix that the
// session's cache does not hold is prefilled: the rendered ids are compared
// with the ids of the conversation so far, the cache is truncated to the
// common prefix where they differ (a re-tokenized answer, a template that
// rewrites earlier turns), and the rest is sent. The template's eos_token
// also ends an answer.
//
// Not thread-safe: one turn at a time.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "client/bundle_store.h"
#include "client/logits_backend.h"
#include "client/reconnect.h"
#include "common/client/client_permuter.h"
#include "common/engine/sampler.h"

namespace stip {

struct GenerateOptions {
  int max_new_tokens = 128;  // >= 1
  SamplingOptions sampling;  // a fresh Sampler per turn (a seed makes a turn reproducible)
  // Stop when the answer's text contains one of these; the stop string and
  // anything after it are not returned.
  std::vector<std::string> stop;
  bool stop_at_eos = true;
  // Checked before every step; true ends the turn with finish_reason "cancelled".
  std::function<bool()> cancelled;
};

struct GenerateResult {
  std::vector<int64_t> prompt_ids;  // the ids this turn appended for the prompt
  std::vector<int64_t> token_ids;   // generated ids (not the EOS that ended the answer)
  std::string text;                 // everything passed to the callback, concatenated
  std::string finish_reason;        // "length" | "eos" | "stop" | "cancelled"
  int64_t context_length = 0;       // ids in the conversation after the turn
  int64_t reused_positions = 0;     // GenerateConversation: positions of the cache kept
  int64_t conversation_length = 0;  // GenerateConversation: ids of the rendered conversation
  int64_t prefilled_positions = 0;  // positions the turn's first step sent
  double prefill_seconds = 0;       // the first step (the prompt)
  double decode_seconds = 0;        // the other steps
};

// `piece`: complete UTF-8 text (may be empty only for the last call); `ids`: the
// generated ids since the previous call.
using PieceCallback =
    std::function<void(const std::string& piece, const std::vector<int64_t>& ids)>;

// Throws kInvalidArgument naming the option: temperature >= 0 and finite,
// top_k >= 0, 0 < top_p <= 1, repetition_penalty > 0 and finite,
// max_new_tokens >= 1, no empty stop string.
void ValidateGenerateOptions(const GenerateOptions& options);

class Generator {
 public:
  Generator(std::shared_ptr<const ClientBundle> bundle, std::unique_ptr<LogitsBackend> backend);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // One turn: `prompt` is encoded (user text that spells a special token
  // stays plain text) and appended to the conversation.
  GenerateResult Generate(const std::string& prompt, const GenerateOptions& options,
                          const PieceCallback& on_piece = {});
  // The same with the prompt given as ids (appended as they are).
  GenerateResult GenerateIds(const std::vector<int64_t>& prompt_ids, const GenerateOptions& options,
                             const PieceCallback& on_piece = {});
  // Continues the conversation whose ids are `conversation` (all of them,
  // from the first): reuses the cache for the longest common prefix with the
  // conversation so far, truncates the rest, prefills the new suffix.
  GenerateResult GenerateConversation(const std::vector<int64_t>& conversation,
                                      const GenerateOptions& options,
                                      const PieceCallback& on_piece = {});

  // Chat mode: Generate(prompt) adds `prompt` as a user message and renders
  // the conversation with the bundle's chat template ("" system: none).
  // kFailedPrecondition if the bundle has no chat template.
  void EnableChat(const std::string& system_prompt = "");
  bool chat_mode() const { return chat_mode_; }
  // Chat mode: the messages so far (system, user, assistant...).
  const nlohmann::ordered_json& messages() const { return messages_; }

  // Forgets the conversation and closes the session (the next turn opens one).
  void Reset();
  // Opens the session now (otherwise the first turn does): reports an
  // unreachable server before the user types anything.
  void Connect();
  // Moves the conversation to another bundle and backend of the same model
  // (after a key rotation: new permutations, new instance): the old session
  // is closed and the next turn sends the whole conversation again.
  // kFailedPrecondition if the sizes of the model differ.
  void Rebind(std::shared_ptr<const ClientBundle> bundle, std::unique_ptr<LogitsBackend> backend);

  // Reconnect within a turn when the session is lost (default: never). Only
  // once a session was opened: an unreachable server at the start is
  // reported at once.
  void SetReconnectPolicy(ReconnectPolicy policy) { reconnect_ = std::move(policy); }
  // From another thread while a turn runs: interrupts the backend's step in
  // flight (LogitsBackend::Interrupt); the turn then fails, the next opens a
  // new session.
  void Interrupt();

  // Sessions opened again after a loss (for tests and logs).
  int reconnects() const { return reconnects_; }

  const std::vector<int64_t>& history() const { return history_; }
  // Positions the server's cache holds for this conversation.
  int64_t cached_positions() const { return fed_; }
  LogitsBackend& backend() { return *backend_; }
  const ClientBundle& bundle() const { return *bundle_; }

 private:
  void EnsureSession();
  int64_t ContextLimit() const;
  // Runs `fn` (which opens the session if needed); when it fails because the
  // session was lost, reconnects per reconnect_ and runs it again.
  void WithReconnect(const GenerateOptions& options, const std::function<void()>& fn);
  // Steps everything of history_ the server's cache does not hold yet;
  // returns o' of the last position.
  at::Tensor StepPending(const GenerateOptions& options);

  std::shared_ptr<const ClientBundle> bundle_;
  std::unique_ptr<LogitsBackend> backend_;
  std::mutex backend_mu_;         // guards swapping backend_ against Interrupt
  std::unique_ptr<ClientPermuter> permuter_;  // x' = x[..., p], o = o'[..., argsort(p_c)]
  std::vector<int64_t> history_;  // every id of the conversation
  int64_t fed_ = 0;               // history_[0, fed_) is in the server's cache
  ReconnectPolicy reconnect_;
  bool had_session_ = false;  // a session was opened once
  int reconnects_ = 0;
  bool chat_mode_ = false;
  std::string system_prompt_;
  nlohmann::ordered_json messages_ = nlohmann::ordered_json::array();
  std::vector<int64_t> chat_eos_;   // the template's eos_token, if it is one token
  std::vector<int64_t> extra_eos_;  // during a chat turn: chat_eos_
};

}  // namespace stip
