// The client daemon's local API (`stip-client serve`): the Chat service.
// Generate streams one completion as text pieces while tokens arrive.
// Requests with a conversation_id share a Generator (session and KV cache
// kept between calls); "" is a one-off session, closed after the call. A
// conversation is used by one request at a time (a concurrent request on it
// gets ABORTED); the least recently used idle conversation is dropped when
// there are too many. Prompts and answers are never logged.
//
// With chat_template set (the default of `stip-client serve` when the model
// has a template), a prompt is a user message: the conversation is rendered
// with the model's chat template and only its new suffix is prefilled
// (Generator's chat mode). Sampling settings a request leaves at 0 come
// from the model's generation_config.json.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "client/reconnect.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip {

class ClientBundle;
class ClientConnection;
class Generator;
class LogitsBackend;

struct ChatServiceOptions {
  std::shared_ptr<const ClientBundle> bundle;
  // A fresh, unopened backend per conversation.
  std::function<std::unique_ptr<LogitsBackend>()> make_backend;
  // Set: bundle and backends come from it, and turns renew the token and
  // follow key rotations (bundle_refresh.h); bundle/make_backend are unused.
  std::shared_ptr<ClientConnection> connection;
  size_t max_conversations = 64;
  int default_max_new_tokens = 128;  // for max_new_tokens = 0
  int max_new_tokens_limit = 8192;
  size_t max_prompt_bytes = 1 << 20;  // larger prompts: RESOURCE_EXHAUSTED
  ReconnectPolicy reconnect;          // for every conversation's Generator
  bool chat_template = false;         // apply the bundle's chat template
  std::string system_prompt;          // chat_template: the system message ("" none)
};

class ChatService final : public v1::Chat::Service {
 public:
  explicit ChatService(ChatServiceOptions options);
  ~ChatService() override;

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;

  size_t conversations() const;
  // Generate calls in progress.
  int active() const { return active_.load(); }

 private:
  struct Conversation {
    std::mutex mu;  // held while a request uses it
    std::unique_ptr<Generator> generator;
    uint64_t generation = 0;  // the connection view the generator is bound to
    std::chrono::steady_clock::time_point last_used;
  };
  std::shared_ptr<Conversation> Acquire(const std::string& id);
  // A generator on the current bundle and backend (and the view it is of).
  std::unique_ptr<Generator> NewGenerator(uint64_t* generation) const;

  ChatServiceOptions options_;
  std::atomic<int> active_{0};
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Conversation>> conversations_;
};

}  // namespace stip
