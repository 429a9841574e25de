// The client daemon's OpenAI-compatible HTTP API (`stip-client serve --http
// ADDR`), next to the gRPC Chat service: GET /v1/models, POST
// /v1/chat/completions, POST /v1/completions (both streamed as server-sent
// events when asked), POST /v1/embeddings (400 until encoders land), GET
// /health, and the chat page at GET /. Programs on the device call it as they
// would call a cloud service; the daemon runs STIP underneath, so the cloud
// sees only x' and o'.
//
// Every request is its own session on the stip server (the API is stateless:
// the messages carry the conversation), so concurrent requests are concurrent
// sessions. When the HTTP client goes away (its socket closes), the step in
// flight on the stip server is interrupted and the session is closed, as the
// Chat service does for a cancelled gRPC call. Prompts and answers are never
// logged. Wire format: client/openai_api.h.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "client/reconnect.h"

namespace stip {

class ClientBundle;
class ClientConnection;
class LogitsBackend;
class ClientMetrics;

struct HttpApiOptions {
  // As ChatServiceOptions: a bundle and a backend factory, or a connection
  // (token renewal, key rotations).
  std::shared_ptr<const ClientBundle> bundle;
  std::function<std::unique_ptr<LogitsBackend>()> make_backend;
  std::shared_ptr<ClientConnection> connection;
  ReconnectPolicy reconnect;
  std::string model_id;  // what /v1/models lists and requests name
  std::string api_key;   // "": no key needed; else "Authorization: Bearer KEY"
  int max_tokens_limit = 8192;
  size_t max_prompt_bytes = 1 << 20;
  int max_concurrent = 64;  // requests generating at once (429 beyond)
  // The page at GET / ("" files: no page). Kept in client/web/, built in.
  bool serve_page = true;
  ClientMetrics* metrics = nullptr;  // may be null
  // As ChatServiceOptions: chat completions are rendered with the bundle's
  // chat template (when it has one; else the messages' contents are joined:
  // RenderChatPrompt), `system_prompt` ("" none) goes first unless the request
  // has a system message of its own.
  bool chat_template = false;
  std::string system_prompt;
};

class HttpApi {
 public:
  explicit HttpApi(HttpApiOptions options);
  ~HttpApi();  // Stop()
  HttpApi(const HttpApi&) = delete;
  HttpApi& operator=(const HttpApi&) = delete;

  // Listens on HOST:PORT (port 0: any; "[::1]:PORT" for IPv6) and serves on
  // its own threads. Returns the port. Throws kInvalidArgument for a bad
  // address, kUnavailable-like kFailedPrecondition when it cannot bind.
  int Start(const std::string& address);
  // Stops listening and waits for the requests in progress.
  void Stop();

  // Requests generating now.
  int active() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stip
