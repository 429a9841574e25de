#include "client/http_api.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "client/bundle_refresh.h"
#include "client/bundle_store.h"
#include "client/client_metrics.h"
#include "client/generator.h"
#include "client/openai_api.h"
#include "client/web_assets.h"
#include "common/chat/chat_template.h"
#include "common/error.h"
#include "common/metrics/httplib.h"
#include "common/tokenizer/tokenizer.h"

namespace stip {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string SockAddrText(const sockaddr_storage& ss, int* port) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    *port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    *port = ntohs(a->sin6_port);
  } else {
    *port = -1;
  }
  return buf;
}

// The socket of the connection a request came on: cpp-httplib 0.11 does not
// hand it to handlers, so it is found by its two addresses among the
// process's descriptors (a few hundred at most; once per request). -1 if
// not found.
int FindConnectionSocket(const httplib::Request& req) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0') continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
    if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
    int lport = 0, pport = 0;
    if (SockAddrText(peer, &pport) != req.remote_addr || pport != req.remote_port) continue;
    if (SockAddrText(local, &lport) != req.local_addr || lport != req.local_port) continue;
    found = static_cast<int>(fd);
    break;
  }
  closedir(d);
  return found;
}

// While a request generates: watches its connection and, once the HTTP client
// has gone (the socket hung up), interrupts the step in flight on the stip
// server (Generator::Interrupt ends the session at once) and keeps doing so
// until the request ends, so that a session reopened meanwhile goes too. The
// generator checks gone() between steps.
class PeerWatch {
 public:
  PeerWatch(int fd, Generator& generator)
      : thread_([this, fd, &generator] {
          std::unique_lock<std::mutex> lock(mu_);
          while (!done_) {
            if (!gone_ && fd >= 0) {
              pollfd p{fd, POLLRDHUP, 0};
              if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
                gone_ = true;
              }
            }
            if (gone_) generator.Interrupt();
            cv_.wait_for(lock, std::chrono::milliseconds(20));
          }
        }) {}
  ~PeerWatch() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  PeerWatch(const PeerWatch&) = delete;
  PeerWatch& operator=(const PeerWatch&) = delete;

  bool gone() const { return gone_.load(); }
  void SetGone() { gone_ = true; }  // a write failed

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> gone_{false};
  std::thread thread_;  // last: starts once the members above exist
};

void SendError(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(DumpJson(e.ToJson()), "application/json");
}

std::string SseEvent(const json& j) { return "data: " + DumpJson(j) + "\n\n"; }

json Usage(const GenerateResult& r) {
  const auto p = static_cast<int64_t>(r.prompt_ids.size());
  const auto c = static_cast<int64_t>(r.token_ids.size());
  return {{"prompt_tokens", p}, {"completion_tokens", c}, {"total_tokens", p + c}};
}

}  // namespace

struct HttpApi::Impl {
  HttpApiOptions options;
  httplib::Server server;
  std::thread thread;
  std::atomic<int> active{0};
  bool started = false;

  // One request's generation: its own generator (a fresh session).
  struct Job {
    CompletionRequest request;
    std::string prompt;
    // With the chat template: the messages before the last (a user message,
    // the turn's `prompt`), rendered by the Generator in chat mode.
    bool templated = false;
    nlohmann::ordered_json history = nlohmann::ordered_json::array();
    std::unique_ptr<Generator> gen;
    uint64_t generation = 0;
    int fd = -1;
    std::string id;
    int64_t created = 0;
    bool streamed = false;
  };

  std::shared_ptr<const ClientBundle> Bundle() const {
    return options.connection ? options.connection->Current().bundle : options.bundle;
  }

  // The request's messages for the chat template: --system first unless the
  // request has a system message, "developer" as "system" (what OpenAI's
  // newer models call it); the last one must be the user's.
  nlohmann::ordered_json TemplateMessages(const std::vector<ChatMessage>& in) const {
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    bool has_system = false;
    for (const ChatMessage& m : in) has_system |= m.role == "system" || m.role == "developer";
    if (!has_system && !options.system_prompt.empty()) {
      out.push_back({{"role", "system"}, {"content", options.system_prompt}});
    }
    for (const ChatMessage& m : in) {
      out.push_back({{"role", m.role == "developer" ? "system" : m.role}, {"content", m.content}});
    }
    if (in.empty() || in.back().role != "user") {
      throw BadRequest(
          "the last message must be the user's (role \"user\"): the model's chat "
          "template renders the assistant's answer to it",
          "messages");
    }
    return out;
  }

  std::unique_ptr<Generator> NewGenerator(uint64_t* generation) const {
    std::unique_ptr<Generator> g;
    if (options.connection) {
      ClientConnection::View v = options.connection->Current();
      *generation = v.generation;
      g = std::make_unique<Generator>(v.bundle, v.make_backend());
    } else {
      g = std::make_unique<Generator>(options.bundle, options.make_backend());
    }
    g->SetReconnectPolicy(options.reconnect);
    return g;
  }

  bool Authorized(const httplib::Request& req, httplib::Response& res) const {
    if (options.api_key.empty()) return true;
    const std::string h = req.get_header_value("Authorization");
    ApiError e;
    e.status = 401;
    e.type = "invalid_request_error";
    e.code = "invalid_api_key";
    if (h.empty()) {
      e.message =
          "You didn't provide an API key. Send it as \"Authorization: Bearer KEY\" (the key given "
          "to stip-client serve --api-key).";
      SendError(res, e);
      return false;
    }
    const std::string prefix = "Bearer ";
    const std::string key = h.compare(0, prefix.size(), prefix) == 0 ? h.substr(prefix.size()) : "";
    if (key.size() != options.api_key.size() ||
        CRYPTO_memcmp(key.data(), options.api_key.data(), key.size()) != 0) {
      e.message = "Incorrect API key provided.";  // never echoes the key
      SendError(res, e);
      return false;
    }
    return true;
  }

  json ModelObject() const {
    return {{"id", options.model_id},
            {"object", "model"},
            {"created", 0},
            {"owned_by", "stip"},
            {"stip_instance", Bundle()->instance_id()}};
  }

  void Routes() {
    server.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(
          DumpJson(
              {{"status", "ok"}, {"model", options.model_id}, {"active_requests", active.load()}}),
          "application/json");
    });
    server.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      if (!Authorized(req, res)) return;
      res.set_content(DumpJson({{"object", "list"}, {"data", json::array({ModelObject()})}}),
                      "application/json");
    });
    server.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (!Authorized(req, res)) return;
      if (req.matches[1] != options.model_id) {
        SendError(res, UnknownModel(req.matches[1]));
        return;
      }
      res.set_content(DumpJson(ModelObject()), "application/json");
    });
    server.Post("/v1/chat/completions",
                [this](const httplib::Request& req, httplib::Response& res) {
                  Completion(req, res, /*chat=*/true);
                });
    server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      Completion(req, res, /*chat=*/false);
    });
    server.Post("/v1/embeddings", [this](const httplib::Request& req, httplib::Response& res) {
      if (!Authorized(req, res)) return;
      SendError(res, BadRequest("model " + QuoteForMessage(options.model_id) +
                                    " is a causal language model: embeddings need an encoder "
                                    "model, which stip does not serve yet",
                                "model", "model_not_supported"));
    });
    if (options.serve_page) {
      for (const WebAsset& a : WebAssets()) {
        const std::string body(a.data, a.size);
        const std::string type = a.content_type;
        auto serve = [body, type](const httplib::Request&, httplib::Response& res) {
          res.set_header("Cache-Control", "no-cache");
          res.set_header("X-Content-Type-Options", "nosniff");
          res.set_content(body, type.c_str());
        };
        server.Get("/" + std::string(a.name), serve);
        if (std::string(a.name) == "index.html") server.Get("/", serve);
      }
    }
    server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      ApiError e;
      e.status = res.status;
      e.type = "invalid_request_error";
      e.message = res.status == 404
                      ? "no such endpoint: " + req.method + " " + QuoteForMessage(req.path)
                      : "HTTP " + std::to_string(res.status);
      e.code = res.status == 404 ? "unknown_url" : "";
      SendError(res, e);
    });
    server.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          try {
            std::rethrow_exception(ep);
          } catch (...) {
            SendError(res, ApiErrorFromCurrentException());
          }
        });
  }

  ApiError UnknownModel(const std::string& model) const {
    ApiError e;
    e.status = 404;
    e.type = "invalid_request_error";
    e.param = "model";
    e.code = "model_not_found";
    e.message = "The model " + QuoteForMessage(model) + " does not exist; this daemon serves " +
                QuoteForMessage(options.model_id) + " (GET /v1/models)";
    return e;
  }

  void Completion(const httplib::Request& req, httplib::Response& res, bool chat) {
    if (options.metrics) options.metrics->Request(chat ? "chat" : "completions");
    if (!Authorized(req, res)) return;
    struct Active {
      std::atomic<int>& n;
      explicit Active(std::atomic<int>& c) : n(c) { ++n; }
      ~Active() { --n; }
    };
    auto job = std::make_shared<Job>();
    try {
      json body;
      try {
        body = json::parse(req.body);
      } catch (const json::parse_error& e) {
        throw BadRequest(std::string("the request body is not valid JSON: ") + e.what());
      }
      ApiLimits limits;
      limits.max_tokens_limit = options.max_tokens_limit;
      limits.max_prompt_bytes = options.max_prompt_bytes;
      job->request = ParseCompletionRequest(body, chat, limits);
      if (job->request.model != options.model_id) throw UnknownModel(job->request.model);
      if (job->request.echo && job->request.logprobs) {
        throw BadRequest("echo with logprobs is not supported (no prompt log-probabilities)",
                         "echo");
      }
      // Context check before any session opens.
      std::shared_ptr<const ClientBundle> bundle = Bundle();
      const ChatTemplate* chat_template =
          chat && options.chat_template ? bundle->chat_template() : nullptr;
      int64_t prompt_tokens = 0;
      if (chat_template) {
        // The model's chat template (common/chat): message contents stay
        // plain text, never special tokens, whatever they spell.
        nlohmann::ordered_json messages = TemplateMessages(job->request.messages);
        prompt_tokens = static_cast<int64_t>(
            chat_template->Encode(bundle->tokenizer(), chat_template->Render(messages, true))
                .size());
        job->templated = true;
        job->prompt = messages.back()["content"].get<std::string>();
        messages.erase(messages.size() - 1);
        job->history = std::move(messages);
      } else {
        job->prompt = chat ? RenderChatPrompt(job->request.messages) : job->request.prompt;
        EncodeOptions enc;
        enc.allow_special = false;
        enc.add_special_tokens = true;
        prompt_tokens = static_cast<int64_t>(bundle->tokenizer().Encode(job->prompt, enc).size());
      }
      if (prompt_tokens == 0) {
        throw BadRequest("the prompt encodes to no tokens", chat ? "messages" : "prompt");
      }
      const int64_t limit = bundle->max_positions();
      int& max_new = job->request.options.max_new_tokens;
      if (limit > 0 && prompt_tokens + std::max(max_new, 1) > limit) {
        throw BadRequest("This model's maximum context length is " + std::to_string(limit) +
                             " tokens. However, you requested " +
                             std::to_string(prompt_tokens + std::max(max_new, 1)) + " tokens (" +
                             std::to_string(prompt_tokens) + " in the " +
                             (chat ? "messages" : "prompt") + ", " +
                             std::to_string(std::max(max_new, 1)) +
                             " in the completion). Please reduce the length of the " +
                             (chat ? "messages" : "prompt") + " or completion.",
                         chat ? "messages" : "prompt", "context_length_exceeded");
      }
      if (max_new == 0) {
        max_new = static_cast<int>(
            limit > 0 ? std::min<int64_t>(limit - prompt_tokens, options.max_tokens_limit)
                      : options.max_tokens_limit);
      }
      ValidateGenerateOptions(job->request.options);
      if (active.load() >= options.max_concurrent) {
        ApiError e;
        e.status = 429;
        e.type = "rate_limit_error";
        e.code = "too_many_requests";
        e.message = "too many requests in progress (stip-client serve --http-max-concurrent " +
                    std::to_string(options.max_concurrent) + ")";
        throw e;
      }
      job->gen = NewGenerator(&job->generation);
      if (job->templated) {
        job->gen->EnableChat();
        job->gen->SetMessages(job->history);
      }
      job->fd = FindConnectionSocket(req);
      job->id = NewCompletionId(chat ? "chatcmpl-" : "cmpl-");
      job->created = static_cast<int64_t>(std::time(nullptr));
      if (!job->request.stream) {
        Active a(active);
        json out = RunBlocking(*job);
        if (!out.is_null()) res.set_content(DumpJson(out), "application/json");
        return;
      }
      // Open the session now: refused credentials or an unreachable server
      // get their HTTP status before the stream starts.
      Connect(*job);
    } catch (...) {
      ApiError e = ApiErrorFromCurrentException();
      if (options.metrics) options.metrics->Error(e.status);
      if (e.status >= 500) spdlog::warn("http: {}", e.message);
      SendError(res, e);
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    // cpp-httplib calls the provider again until it calls done(); the whole
    // answer is written in the first call, a second call ends the connection.
    res.set_chunked_content_provider("text/event-stream",
                                     [this, job](size_t, httplib::DataSink& sink) {
                                       if (job->streamed) return false;
                                       job->streamed = true;
                                       Active a(active);
                                       return RunStreaming(*job, sink);
                                     });
  }

  void Connect(Job& job) {
    if (options.connection) {
      ConnectWithRefresh(*options.connection, *job.gen, &job.generation);
    } else {
      job.gen->Connect();
    }
  }

  GenerateResult Run(Job& job, PeerWatch& watch, GenerateOptions options_copy,
                     const PieceCallback& on_piece) {
    options_copy.cancelled = [&watch] { return watch.gone(); };
    return options.connection ? GenerateTurn(*options.connection, *job.gen, &job.generation,
                                             job.prompt, options_copy, on_piece)
                              : job.gen->Generate(job.prompt, options_copy, on_piece);
  }

  // The whole answer as one JSON object (null: the client has gone).
  json RunBlocking(Job& job) {
    const CompletionRequest& cr = job.request;
    GenerateOptions o = cr.options;
    std::vector<TokenLogprob> lps;
    const Clock::time_point t0 = Clock::now();
    std::optional<Clock::time_point> first;
    if (cr.logprobs) {
      o.on_logits = [&](const at::Tensor& logits, int64_t id) {
        lps.push_back(ComputeLogprob(logits, id, cr.top_logprobs));
      };
    }
    GenerateResult r;
    {
      PeerWatch watch(job.fd, *job.gen);
      PieceCallback on_piece = [&](const std::string&, const std::vector<int64_t>& ids) {
        if (!first && !ids.empty()) first = Clock::now();
      };
      try {
        r = Run(job, watch, o, on_piece);
      } catch (...) {
        if (watch.gone()) return json();
        throw;
      }
      if (watch.gone()) return json();
    }
    Observe(r, t0, first);
    lps.resize(std::min(lps.size(), r.token_ids.size()));  // not the EOS that ended it
    const Tokenizer& tok = job.gen->bundle().tokenizer();
    json choice = {{"index", 0}, {"finish_reason", OpenAiFinishReason(r.finish_reason)}};
    json out = {{"id", job.id}, {"created", job.created}, {"model", options.model_id}};
    if (cr.chat) {
      out["object"] = "chat.completion";
      choice["message"] = {{"role", "assistant"}, {"content", r.text}, {"refusal", nullptr}};
      choice["logprobs"] = cr.logprobs ? ChatLogprobsJson(tok, lps) : json();
    } else {
      out["object"] = "text_completion";
      choice["text"] = cr.echo ? job.prompt + r.text : r.text;
      choice["logprobs"] = cr.logprobs ? CompletionLogprobsJson(tok, lps, 0) : json();
    }
    out["choices"] = json::array({choice});
    out["usage"] = Usage(r);
    return out;
  }

  // False: the client has gone.
  bool RunStreaming(Job& job, httplib::DataSink& sink) {
    const CompletionRequest& cr = job.request;
    const Tokenizer& tok = job.gen->bundle().tokenizer();
    PeerWatch watch(job.fd, *job.gen);
    auto write = [&](const std::string& s) {
      if (watch.gone()) return;
      if (!sink.write(s.data(), s.size())) watch.SetGone();
    };
    auto chunk = [&](json choice) {
      json c = {{"id", job.id},
                {"object", cr.chat ? "chat.completion.chunk" : "text_completion"},
                {"created", job.created},
                {"model", options.model_id},
                {"choices", json::array({std::move(choice)})}};
      if (cr.include_usage) c["usage"] = nullptr;
      return c;
    };
    if (cr.chat) {
      write(SseEvent(chunk({{"index", 0},
                            {"delta", {{"role", "assistant"}, {"content", ""}}},
                            {"logprobs", nullptr},
                            {"finish_reason", nullptr}})));
    } else if (cr.echo) {
      write(SseEvent(chunk({{"index", 0},
                            {"text", job.prompt},
                            {"logprobs", nullptr},
                            {"finish_reason", nullptr}})));
    }
    GenerateOptions o = cr.options;
    std::deque<TokenLogprob> pending;
    if (cr.logprobs) {
      o.on_logits = [&](const at::Tensor& logits, int64_t id) {
        pending.push_back(ComputeLogprob(logits, id, cr.top_logprobs));
      };
    }
    size_t text_offset = 0;
    const Clock::time_point t0 = Clock::now();
    std::optional<Clock::time_point> first;
    PieceCallback on_piece = [&](const std::string& piece, const std::vector<int64_t>& ids) {
      if (!first && !ids.empty()) first = Clock::now();
      std::vector<TokenLogprob> lps;
      for (size_t i = 0; i < ids.size() && !pending.empty(); ++i) {
        lps.push_back(std::move(pending.front()));
        pending.pop_front();
      }
      if (piece.empty()) return;  // the last call: ids without text
      json choice = {{"index", 0}, {"finish_reason", nullptr}};
      if (cr.chat) {
        choice["delta"] = {{"content", piece}};
        choice["logprobs"] = cr.logprobs ? ChatLogprobsJson(tok, lps) : json();
      } else {
        choice["text"] = piece;
        choice["logprobs"] = cr.logprobs ? CompletionLogprobsJson(tok, lps, text_offset) : json();
      }
      text_offset += piece.size();
      write(SseEvent(chunk(std::move(choice))));
    };
    try {
      GenerateResult r = Run(job, watch, o, on_piece);
      if (watch.gone()) return false;
      Observe(r, t0, first);
      json last = {{"index", 0},
                   {"finish_reason", OpenAiFinishReason(r.finish_reason)},
                   {"logprobs", nullptr}};
      if (cr.chat) {
        last["delta"] = json::object();
      } else {
        last["text"] = "";
      }
      write(SseEvent(chunk(std::move(last))));
      if (cr.include_usage) {
        json u = chunk(json());
        u["choices"] = json::array();
        u["usage"] = Usage(r);
        write(SseEvent(u));
      }
    } catch (...) {
      if (watch.gone()) return false;
      ApiError e = ApiErrorFromCurrentException();
      if (options.metrics) options.metrics->Error(e.status);
      if (e.status >= 500) spdlog::warn("http: {}", e.message);
      write(SseEvent(e.ToJson()));
    }
    write("data: [DONE]\n\n");
    if (watch.gone()) return false;
    sink.done();
    return true;
  }

  void Observe(const GenerateResult& r, Clock::time_point t0,
               const std::optional<Clock::time_point>& first) {
    if (!options.metrics) return;
    const double ttft = first ? std::chrono::duration<double>(*first - t0).count() : -1;
    options.metrics->Completed(r.prompt_ids.size(), r.token_ids.size(), ttft,
                               r.decode_seconds > 0 && r.token_ids.size() > 1
                                   ? (r.token_ids.size() - 1) / r.decode_seconds
                                   : -1);
  }
};

HttpApi::HttpApi(HttpApiOptions options) : impl_(std::make_unique<Impl>()) {
  if (!options.connection && (!options.bundle || !options.make_backend)) {
    throw InvalidArgument("the HTTP API needs a bundle and a backend factory");
  }
  if (options.model_id.empty()) throw InvalidArgument("the HTTP API needs a model id");
  impl_->options = std::move(options);
  // One thread per connection being served (cpp-httplib's model): the
  // requests generating at once, plus idle keep-alive connections.
  const int threads = impl_->options.max_concurrent + 16;
  impl_->server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  impl_->server.set_payload_max_length(impl_->options.max_prompt_bytes * 8 + (1 << 16));
  impl_->server.set_keep_alive_timeout(5);
  // Every SSE chunk is a small write: without TCP_NODELAY, Nagle's algorithm
  // and the peer's delayed ACK hold tokens back (measured: 6x fewer tokens/s).
  impl_->server.set_tcp_nodelay(true);
  impl_->Routes();
}

HttpApi::~HttpApi() { Stop(); }

int HttpApi::Start(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    throw InvalidArgument("--http " + QuoteForMessage(address) + ": expected HOST:PORT");
  }
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int port = 0;
  try {
    size_t used = 0;
    port = std::stoi(address.substr(colon + 1), &used);
    if (used != address.size() - colon - 1 || port < 0 || port > 65535) throw 0;
  } catch (...) {
    throw InvalidArgument("--http " + QuoteForMessage(address) + ": bad port");
  }
  if (port == 0) {
    port = impl_->server.bind_to_any_port(host);
  } else if (!impl_->server.bind_to_port(host, port)) {
    port = -1;
  }
  if (port < 0) {
    throw FailedPrecondition("cannot listen for HTTP on " + QuoteForMessage(address) +
                             " (address in use or not local?)");
  }
  impl_->started = true;
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
  return port;
}

void HttpApi::Stop() {
  if (!impl_->started) return;
  impl_->started = false;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

int HttpApi::active() const { return impl_->active.load(); }

}  // namespace stip
