// stip-client: the user's device (party P3 of STIP). It holds the client
// bundle (embedding table, the permutations p and p_c, the tokenizer), sends
// the stip server only permuted hidden states x' = x[..., p] and receives only
// permuted logits o'.
//
//   register  enrol with the developer's registry; store the bundle and the
//             server's connection details in --data-dir
//   fetch     re-fetch the bundle of the current instance (after a rotation;
//             generate, chat and serve do it on their own when the server
//             says the instance is retired, and renew the access token)
//   generate  one completion: prints the prompt and the continuation
//   chat      interactive prompt, the conversation kept between turns (with
//             the model's chat template when it has one)
//   serve     the local Chat gRPC service and/or the OpenAI-compatible HTTP
//             API with the chat page (--http) for other programs
//   embed, fill-mask, classify
//             encoder models (BERT, ViT; docs/encoders.md)
//   render-chat  print a conversation rendered with a model's chat template
#include <signal.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "client/bundle_refresh.h"
#include "client/bundle_store.h"
#include "client/chat_cli.h"
#include "client/chat_service.h"
#include "client/client_metrics.h"
#include "client/encoder_service.h"
#include "client/encoder_tasks.h"
#include "client/generator.h"
#include "client/http_api.h"
#include "client/local_backend.h"
#include "client/reconnect.h"
#include "client/registration.h"
#include "client/remote_session.h"
#include "common/chat/chat_template.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/metrics/metrics.h"
#include "common/rpc/server_setup.h"
#include "common/rpc/tls.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/files.h"
#include "common/util/no_core_dumps.h"

namespace stip {
namespace {

std::atomic<bool> g_interrupted{false};

// Where sessions go: the stip server named by the credentials (or --server),
// or, for tests and offline runs, an in-process transformed model.
struct ConnectFlags {
  std::string data_dir;
  std::string bundle;        // a bundle directory instead of DATA_DIR/bundle
  std::string server;        // overrides the credentials' server address
  std::string server_ca;     // overrides the credentials' CA (PEM file)
  std::string server_name;   // expected name in the server's certificate
  std::string server_model;  // offline: a transformed server checkpoint, run here
  bool insecure = false;     // plaintext toward the stip server
  int64_t max_context = 0;
  std::string logits = "fp32";  // logits format (common/rpc/logits_transport.h)
  bool no_refresh = false;      // no token renewal, no bundle fetch after a rotation
  double timeout_s = 0;         // generate: deadline of the whole request (0: none)
  ReconnectPolicy reconnect{8, 0.5, 10, {}};

  // `sessions`: the flags of commands that open sessions (causal models).
  void Add(CLI::App* app, bool sessions = true) {
    app->add_option("--data-dir", data_dir, "the client's data directory (from `register`)");
    app->add_option("--bundle", bundle,
                    "use this client bundle directory instead of DATA_DIR/bundle");
    app->add_option("--server", server, "stip server HOST:PORT (overrides the registered one)");
    app->add_option("--server-ca,--tls-ca", server_ca,
                    "CA certificate (PEM) of the stip server (overrides the registered one)");
    app->add_option("--server-name,--tls-server-name", server_name,
                    "name expected in the stip server's certificate");
    app->add_flag("--insecure", insecure, "connect to the stip server WITHOUT TLS (testing only)");
    app->add_option("--server-model", server_model,
                    "TESTING ONLY: run this transformed server checkpoint in-process instead of "
                    "connecting to a stip server (no privacy: it needs both halves here)");
    if (!sessions) return;
    app->add_option("--max-context", max_context, "session context limit (0: the server's)");
    app->add_option("--logits", logits,
                    "how the server sends logits back: fp32 (exact), fp16 (half the bytes; exact "
                    "for a server computing in FP16) or top-k:K (the K largest; exact for greedy "
                    "decoding and top-k sampling with --top-k < K)")
        ->capture_default_str();
    app->add_flag("--no-refresh", no_refresh,
                  "never renew the access token or fetch a rotated bundle on our own");
    app->add_option("--reconnect-attempts", reconnect.max_attempts,
                    "when the server is lost mid-conversation: reconnect attempts before giving "
                    "up (0: never reconnect)")
        ->capture_default_str()
        ->check(CLI::Range(0, 1000));
    app->add_option("--reconnect-initial-delay-s", reconnect.initial_delay_s,
                    "first reconnect delay; doubles per attempt, with jitter")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 3600.0));
    app->add_option("--reconnect-max-delay-s", reconnect.max_delay_s,
                    "longest delay between reconnect attempts")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 3600.0));
  }
};

struct Backend {
  std::shared_ptr<const ClientBundle> bundle;
  std::function<std::unique_ptr<LogitsBackend>()> make;
  std::string description;
  // Set for a stip server: renews the token, follows key rotations.
  std::shared_ptr<ClientConnection> connection;
  ReconnectPolicy reconnect;  // notify: unset
};

// Reconnect messages on stderr, between the streamed pieces of the answer.
ReconnectPolicy PrintingPolicy(ReconnectPolicy p) {
  p.notify = [](const std::string& message) {
    std::fflush(stdout);
    std::fprintf(stderr, "\nstip-client: %s\n", message.c_str());
    std::fflush(stderr);
  };
  return p;
}

Backend MakeBackend(const ConnectFlags& f) {
  Backend b;
  b.reconnect = f.reconnect;
  if (f.data_dir.empty() && f.bundle.empty()) {
    throw InvalidArgument("--data-dir is required (or --bundle with --server-model)");
  }
  DataDir dir(f.data_dir);
  if (!f.server_model.empty()) {
    const std::string bundle_dir = f.bundle.empty() ? dir.bundle_dir() : f.bundle;
    b.bundle = ClientBundle::Load(bundle_dir);
    std::shared_ptr<const ServerModel> model = ServerModel::Load(f.server_model);
    if (!model->config().stip_instance.empty() &&
        model->config().stip_instance != b.bundle->instance_id()) {
      throw FailedPrecondition(f.server_model + " is instance " + model->config().stip_instance +
                               ", the bundle belongs to instance " + b.bundle->instance_id());
    }
    spdlog::warn("running the server half in-process from {} (--server-model: testing only)",
                 f.server_model);
    const int64_t max_context = f.max_context;
    const LogitsFormat logits = LogitsFormat::Parse(f.logits);
    b.make = [model, max_context, logits] {
      return std::make_unique<LocalServerBackend>(model, max_context, logits);
    };
    b.description = "in-process model " + f.server_model;
    return b;
  }
  ConnectSettings cs;
  cs.data_dir = f.data_dir;
  cs.bundle_dir = f.bundle;
  cs.server = f.server;
  cs.server_ca = f.server_ca;
  cs.server_name = f.server_name;
  cs.insecure = f.insecure;
  cs.max_context = f.max_context;
  cs.logits_format = LogitsFormat::Parse(f.logits);
  cs.auto_refresh = !f.no_refresh;
  if (f.timeout_s > 0) {
    cs.deadline = std::chrono::system_clock::now() +
                  std::chrono::duration_cast<std::chrono::system_clock::duration>(
                      std::chrono::duration<double>(f.timeout_s));
  }
  b.connection = std::make_shared<ClientConnection>(cs);
  ClientConnection::View v = b.connection->Current();
  b.bundle = v.bundle;
  b.make = v.make_backend;
  b.description = v.description;
  return b;
}

// A generator on the backend, connected now (an unreachable server, refused
// credentials or a rotation are dealt with before anything is printed).
struct Session {
  std::unique_ptr<Generator> gen;
  uint64_t generation = 0;
};

// A generator that reconnects after a lost server (messages on stderr).
Session Connect(const Backend& b) {
  Session s;
  if (b.connection) {
    ClientConnection::View v = b.connection->Current();
    s.generation = v.generation;
    s.gen = std::make_unique<Generator>(v.bundle, v.make_backend());
    s.gen->SetReconnectPolicy(PrintingPolicy(b.reconnect));
    ConnectWithRefresh(*b.connection, *s.gen, &s.generation);
  } else {
    s.gen = std::make_unique<Generator>(b.bundle, b.make());
    s.gen->SetReconnectPolicy(PrintingPolicy(b.reconnect));
    s.gen->Connect();
  }
  return s;
}

struct SamplingFlags {
  GenerateOptions o;
  uint64_t seed = 0;
  CLI::Option* seed_opt = nullptr;
  CLI::Option* greedy_opt = nullptr;
  CLI::Option* temperature_opt = nullptr;
  CLI::Option* top_k_opt = nullptr;
  CLI::Option* top_p_opt = nullptr;
  CLI::Option* penalty_opt = nullptr;
  bool no_eos_stop = false;

  void Add(CLI::App* app) {
    app->add_option("--max-new-tokens", o.max_new_tokens, "tokens to generate per answer")
        ->check(CLI::Range(1, 1 << 20));
    greedy_opt = app->add_flag("--greedy", o.sampling.greedy, "greedy decoding");
    temperature_opt = app->add_option("--temperature", o.sampling.temperature,
                                      "sampling temperature (0: greedy; default: the model's "
                                      "generation_config.json, else 1)");
    top_k_opt = app->add_option("--top-k", o.sampling.top_k,
                                "top-k sampling (0: off; default: generation_config.json)");
    top_p_opt = app->add_option("--top-p", o.sampling.top_p,
                                "nucleus sampling (1: off; default: generation_config.json)");
    penalty_opt = app->add_option("--repetition-penalty", o.sampling.repetition_penalty,
                                  "repetition penalty (1: off; default: generation_config.json)");
    seed_opt = app->add_option("--seed", seed, "random seed (reproducible sampling)");
    app->add_option("--stop", o.stop, "stop at this text (repeatable; not printed)");
    app->add_flag("--ignore-eos", no_eos_stop, "do not stop at the end-of-sequence token");
  }
  GenerateOptions Get() const {
    GenerateOptions g = o;
    if (*seed_opt) g.sampling.seed = seed;
    g.stop_at_eos = !no_eos_stop;
    ValidateGenerateOptions(g);
    return g;
  }
  // What the user set (the rest comes from generation_config.json).
  UserSampling User() const {
    UserSampling u;
    u.greedy = o.sampling.greedy;
    u.seed = seed_opt->count() > 0;
    u.temperature = temperature_opt->count() > 0;
    u.top_k = top_k_opt->count() > 0;
    u.top_p = top_p_opt->count() > 0;
    u.repetition_penalty = penalty_opt->count() > 0;
    return u;
  }
};

// The chat template: applied by chat and serve when the model has one
// (--raw: never), by generate with --chat.
struct ChatFlags {
  std::string system;
  bool raw = false;
  bool chat = false;

  void Add(CLI::App* app, bool for_generate) {
    app->add_option("--system", system,
                    "system message at the start of the conversation (chat template)");
    if (for_generate) {
      app->add_flag("--chat", chat,
                    "apply the model's chat template: --prompt is a user message, only the "
                    "answer is printed");
    } else {
      app->add_flag("--raw", raw, "do not apply the model's chat template (plain continuation)");
    }
  }
  // Whether this bundle's conversations use the template.
  bool Use(const ClientBundle& bundle, bool for_generate) const {
    const bool has = bundle.chat_template() != nullptr;  // throws for a malformed one
    if (for_generate ? !chat : raw) {
      if (!system.empty()) throw InvalidArgument("--system needs the chat template");
      return false;
    }
    if (!has) {
      if (for_generate || !system.empty()) {
        throw FailedPrecondition(bundle.dir() +
                                 ": the model has no chat template (chat_template.jinja or "
                                 "tokenizer_config.json's chat_template)");
      }
      return false;
    }
    return true;
  }
};

// The model's generation_config.json defaults for what the user left unset.
GenerateOptions WithModelDefaults(GenerateOptions options, const SamplingFlags& flags,
                                  const ClientBundle& bundle) {
  ApplyGenerationConfig(bundle.generation_config(), flags.User(), &options.sampling);
  ValidateGenerateOptions(options);
  return options;
}

int RunGenerate(const ConnectFlags& cf, const SamplingFlags& sampling, const ChatFlags& chat,
                const std::string& prompt, bool stats) {
  GenerateOptions options = sampling.Get();
  CheckSamplingExact(LogitsFormat::Parse(cf.logits), options.sampling);  // before connecting
  Backend b = MakeBackend(cf);
  options = WithModelDefaults(options, sampling, *b.bundle);
  CheckSamplingExact(LogitsFormat::Parse(cf.logits), options.sampling);
  const bool use_template = chat.Use(*b.bundle, true);
  Session s = Connect(b);  // an unreachable server is reported before anything is printed
  if (use_template) s.gen->EnableChat(chat.system);
  if (!use_template) std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  PieceCallback print = [](const std::string& piece, const std::vector<int64_t>&) {
    std::fputs(piece.c_str(), stdout);
    std::fflush(stdout);
  };
  GenerateResult r =
      b.connection ? GenerateTurn(*b.connection, *s.gen, &s.generation, prompt, options, print)
                   : s.gen->Generate(prompt, options, print);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  if (stats) {
    std::fprintf(stderr,
                 "stip-client: %zu prompt + %zu new tokens (%s) via %s; prefill %.1f ms, "
                 "decode %.1f tokens/s\n",
                 r.prompt_ids.size(), r.token_ids.size(), r.finish_reason.c_str(),
                 b.description.c_str(), r.prefill_seconds * 1e3,
                 r.decode_seconds > 0 ? (r.token_ids.size() - 1) / r.decode_seconds : 0.0);
    if (use_template) {
      std::fprintf(stderr, "stip-client: chat template %s: conversation of %lld tokens\n",
                   b.bundle->chat_template()->source_name().c_str(),
                   static_cast<long long>(r.conversation_length));
    }
  }
  return 0;
}

int RunChatCommand(const ConnectFlags& cf, const SamplingFlags& sampling, const ChatFlags& chat) {
  GenerateOptions options = sampling.Get();
  CheckSamplingExact(LogitsFormat::Parse(cf.logits), options.sampling);  // before connecting
  Backend b = MakeBackend(cf);
  options = WithModelDefaults(options, sampling, *b.bundle);
  CheckSamplingExact(LogitsFormat::Parse(cf.logits), options.sampling);
  const bool use_template = chat.Use(*b.bundle, false);
  Session s = Connect(b);
  if (use_template) {
    s.gen->EnableChat(chat.system);
    spdlog::info("chat template {} applied (--raw: none)",
                 b.bundle->chat_template()->source_name());
  }
  InstallInterruptHandler(&g_interrupted);
  TurnFunction turn;
  if (b.connection) {
    turn = [&](Generator& gen, const std::string& prompt, const GenerateOptions& o,
               const PieceCallback& print) {
      return GenerateTurn(*b.connection, gen, &s.generation, prompt, o, print);
    };
  }
  return RunChat(*s.gen, options, STDIN_FILENO, stdout, stderr, &g_interrupted, turn);
}

// ---- encoders (BERT, ViT) ----------------------------------------------------------

std::string BundleDirOf(const ConnectFlags& f) {
  if (!f.bundle.empty()) return f.bundle;
  if (f.data_dir.empty()) throw InvalidArgument("--data-dir is required (or --bundle)");
  return DataDir(f.data_dir).bundle_dir();
}

// The encoder bundle and where its Encode calls go (the credentials' server,
// or --server-model in-process).
std::shared_ptr<EncoderTasks> MakeEncoderTasks(const ConnectFlags& f) {
  const std::string bundle_dir = BundleDirOf(f);
  if (!f.server_model.empty()) {
    auto bundle = EncoderBundle::Load(bundle_dir);
    spdlog::warn("running the server half in-process from {} (--server-model: testing only)",
                 f.server_model);
    return std::make_shared<EncoderTasks>(bundle, MakeLocalEncoder(f.server_model));
  }
  if (f.data_dir.empty()) throw InvalidArgument("--data-dir is required");
  const Credentials c = DataDir(f.data_dir).LoadCredentials();
  auto bundle = EncoderBundle::Load(bundle_dir, c.instance_id);
  TlsOptions tls;
  tls.insecure = f.insecure;
  if (!f.server_ca.empty()) {
    tls.ca_file = f.server_ca;
  } else {
    tls.ca_pem = c.server_ca_pem;
  }
  tls.server_name_override = f.server_name;
  RemoteEncoderOptions o;
  o.address = f.server.empty() ? c.server_address : f.server;
  o.instance_id = c.instance_id;
  o.access_token = c.access_token;
  if (f.timeout_s > 0) o.timeout_s = f.timeout_s;
  auto channel = MakeChannel(o.address, tls, "stip-client");
  return std::make_shared<EncoderTasks>(bundle, MakeRemoteEncoder(channel, o));
}

std::string JsonLine(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void PrintTop(const std::string& input, const std::vector<LabelScore>& top, bool json) {
  if (json) {
    nlohmann::json j;
    j["input"] = input;
    j["top"] = nlohmann::json::array();
    for (const LabelScore& s : top) j["top"].push_back({{"label", s.label}, {"score", s.score}});
    std::printf("%s\n", JsonLine(j).c_str());
  } else {
    std::printf("%s\n", input.c_str());
    for (const LabelScore& s : top) {
      std::printf("  %-20s %.4f\n", s.label.c_str(), s.score);
    }
  }
  std::fflush(stdout);
}

std::vector<std::string> ReadLines(const std::string& file) {
  std::ifstream in(file);
  if (!in) throw NotFound("cannot read " + file);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) lines.push_back(line);
  }
  if (lines.empty()) throw InvalidArgument(file + ": no text (one text per line)");
  return lines;
}

int RunEmbed(const ConnectFlags& cf, std::vector<std::string> texts, const std::string& file,
             bool json) {
  if (!file.empty()) {
    for (std::string& t : ReadLines(file)) texts.push_back(std::move(t));
  }
  if (texts.empty()) throw InvalidArgument("give --text or --file");
  auto tasks = MakeEncoderTasks(cf);
  std::vector<std::vector<float>> out = tasks->Embed(texts);
  for (size_t i = 0; i < texts.size(); ++i) {
    if (json) {
      nlohmann::json j;
      j["input"] = texts[i];
      j["embedding"] = out[i];
      std::printf("%s\n", JsonLine(j).c_str());
    } else {
      std::printf("%s\n ", texts[i].c_str());
      for (float v : out[i]) std::printf(" %.6g", v);
      std::printf("\n");
    }
  }
  std::fflush(stdout);
  return 0;
}

int RunFillMask(const ConnectFlags& cf, const std::vector<std::string>& texts, int top_k,
                bool json) {
  auto tasks = MakeEncoderTasks(cf);
  std::vector<std::vector<LabelScore>> out = tasks->FillMask(texts, top_k);
  for (size_t i = 0; i < texts.size(); ++i) PrintTop(texts[i], out[i], json);
  return 0;
}

int RunClassify(const ConnectFlags& cf, const std::vector<std::string>& images,
                const std::vector<std::string>& texts, int top_k, bool json) {
  if (images.empty() == texts.empty()) throw InvalidArgument("give --image or --text");
  auto tasks = MakeEncoderTasks(cf);
  std::vector<std::vector<LabelScore>> out;
  if (!images.empty()) {
    std::vector<std::string> bytes;
    for (const std::string& f : images) {
      if (!PathExists(f)) throw NotFound("image " + f + ": no such file");
      bytes.push_back(ReadFile(f));
    }
    out = tasks->ClassifyImages(bytes, images, top_k);
    for (size_t i = 0; i < images.size(); ++i) PrintTop(images[i], out[i], json);
  } else {
    out = tasks->ClassifyTexts(texts, top_k);
    for (size_t i = 0; i < texts.size(); ++i) PrintTop(texts[i], out[i], json);
  }
  return 0;
}

void OnTerminate(int) { g_interrupted.store(true); }

struct ServeFlags {
  std::string listen;  // gRPC Chat ("": none)
  TlsOptions tls;
  bool listen_insecure = false;
  size_t max_conversations = 64;
  size_t max_prompt_bytes = 1 << 20;
  std::string http;  // OpenAI-compatible HTTP API ("": none)
  std::string api_key_file;
  std::string model_name;
  int http_max_concurrent = 64;
  std::string metrics_listen;
};

// The model's name in the HTTP API: --model-name, else the bundle config's
// _name_or_path (its last component), else its model_type.
std::string ModelName(const ServeFlags& f, const ClientBundle& bundle) {
  if (!f.model_name.empty()) return f.model_name;
  std::string name;
  try {
    nlohmann::json j = nlohmann::json::parse(ReadFile(bundle.dir() + "/config.json"));
    name = j.value("_name_or_path", "");
    while (!name.empty() && name.back() == '/') name.pop_back();
    if (name.rfind('/') != std::string::npos) name = name.substr(name.rfind('/') + 1);
    if (name.empty()) name = j.value("model_type", "");
  } catch (const std::exception&) {
  }
  return name.empty() ? "stip-model" : name;
}

std::string HostOf(const std::string& address) { return address.substr(0, address.rfind(':')); }

int RunServe(const ConnectFlags& cf, const ChatFlags& chat, const ServeFlags& f) {
  if (f.listen.empty() && f.http.empty()) {
    throw InvalidArgument("serve needs --listen (gRPC Chat) or --http (OpenAI API), or both");
  }
  std::string api_key;
  if (!f.api_key_file.empty()) {
    api_key = ReadFile(f.api_key_file);
    while (!api_key.empty() &&
           (api_key.back() == '\n' || api_key.back() == '\r' || api_key.back() == ' ')) {
      api_key.pop_back();
    }
    if (api_key.empty()) throw InvalidArgument("--api-key-file " + f.api_key_file + " is empty");
  } else if (const char* env = std::getenv("STIP_API_KEY"); env && *env) {
    api_key = env;
  }
  if (IsEncoderBundle(BundleDirOf(cf))) {
    if (!f.http.empty() || f.listen.empty()) {
      throw InvalidArgument(
          "an encoder bundle is served on --listen (Embed, FillMask, Classify); the HTTP API "
          "(--http) serves causal language models");
    }
    // An encoder: Embed, FillMask and Classify (no sessions, no generation).
    EncoderChatService service(MakeEncoderTasks(cf));
    ServerSetup setup;
    setup.address = f.listen;
    setup.tls = f.tls;
    setup.tls.insecure = f.listen_insecure;
    setup.name = "stip-client";
    int port = 0;
    auto server = StartServer(setup, {&service}, &port, {v1::Chat::service_full_name()});
    std::printf("stip-client listening on %s:%d\n", HostOf(f.listen).c_str(), port);
    std::fflush(stdout);
    spdlog::info("serving Embed, FillMask and Classify for an encoder bundle");
    struct sigaction sa {};
    sa.sa_handler = OnTerminate;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    while (!g_interrupted.load()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    spdlog::info("shutting down");
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    return 0;
  }
  Backend b = MakeBackend(cf);
  const bool use_template = chat.Use(*b.bundle, false);
  // Refused credentials or a mismatched model fail now; an unreachable
  // server only warns (it may start after us), requests then retry.
  try {
    Connect(b);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kUnavailable) throw;
    spdlog::warn("{} (requests will try again)", e.what());
  }
  ReconnectPolicy reconnect = b.reconnect;
  reconnect.notify = [](const std::string& message) { spdlog::warn("chat: {}", message); };

  std::unique_ptr<MetricsEndpoint> metrics;
  std::unique_ptr<ClientMetrics> client_metrics;
  if (!f.metrics_listen.empty()) {
    metrics = std::make_unique<MetricsEndpoint>();
    client_metrics = std::make_unique<ClientMetrics>(metrics->registry());
    const int port = metrics->Listen(f.metrics_listen);
    std::printf("stip-client metrics on http://%s:%d/metrics\n", HostOf(f.metrics_listen).c_str(),
                port);
  }

  std::unique_ptr<HttpApi> http;
  if (!f.http.empty()) {
    HttpApiOptions ho;
    ho.bundle = b.bundle;
    ho.make_backend = b.make;
    ho.connection = b.connection;
    ho.reconnect = reconnect;
    ho.model_id = ModelName(f, *b.bundle);
    ho.api_key = api_key;
    ho.max_prompt_bytes = f.max_prompt_bytes;
    ho.max_concurrent = f.http_max_concurrent;
    ho.metrics = client_metrics.get();
    ho.chat_template = use_template;
    ho.system_prompt = chat.system;
    http = std::make_unique<HttpApi>(ho);
    const int port = http->Start(f.http);
    std::printf("stip-client HTTP API on http://%s:%d (model \"%s\"%s)\n", HostOf(f.http).c_str(),
                port, ho.model_id.c_str(), api_key.empty() ? "" : ", API key required");
    if (f.listen.empty())
      std::printf("stip-client listening on %s:%d\n", HostOf(f.http).c_str(), port);
    std::fflush(stdout);
  }

  std::unique_ptr<ChatService> service;
  std::unique_ptr<grpc::Server> server;
  if (!f.listen.empty()) {
    ChatServiceOptions so;
    so.bundle = b.bundle;
    so.make_backend = b.make;
    so.connection = b.connection;
    so.max_conversations = f.max_conversations;
    so.max_prompt_bytes = f.max_prompt_bytes;
    so.chat_template = use_template;
    so.system_prompt = chat.system;
    so.reconnect = reconnect;
    service = std::make_unique<ChatService>(so);
    ServerSetup setup;
    setup.address = f.listen;
    setup.tls = f.tls;
    setup.tls.insecure = f.listen_insecure;
    setup.name = "stip-client";
    int port = 0;
    server = StartServer(setup, {service.get()}, &port, {v1::Chat::service_full_name()});
    std::printf("stip-client listening on %s:%d\n", HostOf(f.listen).c_str(), port);
  }
  std::fflush(stdout);
  spdlog::info("serving {}{}for instance {} via {}", server ? "Chat " : "",
               http ? "and the HTTP API " : "", b.bundle->instance_id(), b.description);
  struct sigaction sa {};
  sa.sa_handler = OnTerminate;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a closed HTTP connection is a failed write, not a signal
  while (!g_interrupted.load()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  spdlog::info("shutting down");
  if (http) http->Stop();
  // Answers in progress get a few seconds to finish; idle connections none.
  if (server) {
    server->Shutdown(std::chrono::system_clock::now() +
                     std::chrono::seconds(service->active() > 0 ? 5 : 0));
  }
  return 0;
}

// Prints the conversation in FILE rendered with DIR's chat template: the
// text and nothing else (--ids: the token ids as a JSON list instead).
int RunRenderChat(const std::string& dir, const std::string& messages_file, bool generation_prompt,
                  bool ids) {
  if (!IsDirectory(dir)) throw NotFound(dir + ": no such directory");
  std::unique_ptr<ChatTemplate> t = ChatTemplate::FromDirectory(dir);
  if (!t) {
    throw FailedPrecondition(dir +
                             ": no chat template (looked for chat_template.jinja, "
                             "chat_template.json and tokenizer_config.json's chat_template)");
  }
  const nlohmann::ordered_json messages = ReadChatMessages(messages_file);
  const RenderedChat r = t->Render(messages, generation_prompt);
  if (ids) {
    auto tokenizer = Tokenizer::FromDirectory(dir);
    const nlohmann::json j = t->Encode(*tokenizer, r);
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::fwrite(r.text.data(), 1, r.text.size(), stdout);
  std::fflush(stdout);
  return 0;
}

int RunRegister(const std::string& developer, const std::string& user, const std::string& token,
                const std::string& data_dir, const TlsOptions& tls) {
  auto channel = MakeChannel(developer, tls, "stip-client");
  RegistryTrust trust;  // kept, for renewals and bundle fetches later
  trust.insecure = tls.insecure;
  if (!tls.ca_file.empty()) trust.ca_pem = ReadFile(tls.ca_file);
  RegistrationResult r =
      RegisterWithDeveloper(channel, developer, user, token, DataDir(data_dir), trust);
  std::printf("registered as %s for model instance %s: %d files (%.1f MiB) in %s; server %s\n",
              r.credentials.user.c_str(), r.credentials.instance_id.c_str(), r.files,
              r.bytes / 1048576.0, DataDir(data_dir).bundle_dir().c_str(),
              r.credentials.server_address.c_str());
  return 0;
}

int RunFetch(std::string developer, const std::string& data_dir, TlsOptions tls) {
  DataDir dir(data_dir);
  Credentials c = dir.LoadCredentials();
  if (developer.empty()) developer = c.developer;
  if (developer.empty()) throw InvalidArgument("--developer is required (none was recorded)");
  if (tls.ca_file.empty() && !tls.insecure) {  // as recorded at registration
    tls.ca_pem = c.developer_ca_pem;
    tls.insecure = c.developer_insecure;
  }
  auto channel = MakeChannel(developer, tls, "stip-client");
  RegistrationResult r = FetchBundleFromDeveloper(channel, developer, dir);
  std::printf("fetched the bundle of model instance %s: %d files (%.1f MiB); server %s\n",
              r.credentials.instance_id.c_str(), r.files, r.bytes / 1048576.0,
              r.credentials.server_address.c_str());
  return 0;
}

}  // namespace
}  // namespace stip

int main(int argc, char** argv) {
  stip::DisableCoreDumps();  // keys and tokens stay out of core files
  // Logs go to stderr: stdout carries the generated text.
  spdlog::set_default_logger(spdlog::stderr_color_mt("stip-client"));
  spdlog::set_pattern("[%H:%M:%S.%e] [%n] [%l] %v");

  CLI::App app{"stip-client: private inference with a STIP-protected model (user device)"};
  app.require_subcommand(1);

  // register / fetch
  std::string developer, user, token, data_dir;
  stip::TlsOptions dev_tls;
  auto* reg = app.add_subcommand("register", "enrol with the developer and fetch the bundle");
  reg->add_option("--developer", developer, "developer registry HOST:PORT")->required();
  reg->add_option("--user", user, "user name")->required();
  reg->add_option("--token", token, "one-time enrolment token (from stip-developer add-user)")
      ->required();
  reg->add_option("--data-dir", data_dir, "where to keep the bundle and credentials")->required();
  auto* reg_ca =
      reg->add_option("--ca,--tls-ca", dev_tls.ca_file, "CA certificate (PEM) of the registry");
  reg->add_flag("--insecure", dev_tls.insecure, "connect WITHOUT TLS (testing only)")
      ->excludes(reg_ca);

  auto* fetch = app.add_subcommand("fetch", "re-fetch the bundle of the current instance");
  fetch->add_option("--developer", developer, "developer registry HOST:PORT (default: recorded)");
  fetch->add_option("--data-dir", data_dir, "the client's data directory")->required();
  auto* fetch_ca =
      fetch->add_option("--ca,--tls-ca", dev_tls.ca_file, "CA certificate (PEM) of the registry");
  fetch->add_flag("--insecure", dev_tls.insecure, "connect WITHOUT TLS (testing only)")
      ->excludes(fetch_ca);

  // generate
  stip::ConnectFlags gen_conn;
  stip::SamplingFlags gen_sampling;
  std::string prompt;
  bool stats = false;
  stip::ChatFlags gen_chat;
  auto* gen = app.add_subcommand("generate", "print the prompt and its continuation");
  gen_conn.Add(gen);
  gen_sampling.Add(gen);
  gen_chat.Add(gen, true);
  gen->add_option("--prompt", prompt, "the prompt")->required();
  gen->add_flag("--stats", stats, "timings on stderr");
  gen->add_option("--timeout-s", gen_conn.timeout_s,
                  "give up after this long (DEADLINE_EXCEEDED; the server ends the session and "
                  "frees its memory); 0: no deadline")
      ->check(CLI::NonNegativeNumber);

  // chat
  stip::ConnectFlags chat_conn;
  stip::SamplingFlags chat_sampling;
  stip::ChatFlags chat_flags;
  auto* chat = app.add_subcommand("chat", "interactive prompt (/reset, /exit, Ctrl-C)");
  chat_conn.Add(chat);
  chat_sampling.Add(chat);
  chat_flags.Add(chat, false);

  // render-chat
  std::string render_dir, render_messages;
  bool no_generation_prompt = false, render_ids = false;
  auto* render = app.add_subcommand(
      "render-chat", "print a conversation rendered with a model's chat template (nothing else)");
  render
      ->add_option("--model-dir", render_dir,
                   "a model directory, a client bundle, or a directory of tokenizer files")
      ->required();
  render->add_option("--messages", render_messages, "JSON list of {\"role\", \"content\"} objects")
      ->required();
  render->add_flag("--no-generation-prompt", no_generation_prompt,
                   "without the assistant header that starts an answer");
  render->add_flag("--ids", render_ids,
                   "print the token ids (JSON list) instead: template markers as special "
                   "tokens, message content as plain text");

  // serve
  stip::ConnectFlags serve_conn;
  stip::ServeFlags sf;
  stip::ChatFlags serve_chat;
  bool server_insecure = false;
  auto* serve = app.add_subcommand(
      "serve",
      "serve the Chat gRPC service and/or the OpenAI-compatible HTTP API for local programs");
  serve_conn.Add(serve);  // --insecure: plaintext toward the server AND on the listener
  serve_chat.Add(serve, false);
  serve->add_option("--listen", sf.listen, "HOST:PORT for the gRPC Chat service (port 0: any)");
  serve->add_option("--cert,--tls-cert", sf.tls.cert_file,
                    "TLS certificate chain (PEM) to serve with");
  serve->add_option("--key,--tls-key", sf.tls.key_file, "TLS private key (PEM)");
  serve->add_option("--client-ca", sf.tls.ca_file,
                    "require client certificates signed by this CA (PEM)");
  serve->add_flag("--listen-insecure", sf.listen_insecure, "serve Chat WITHOUT TLS");
  serve->add_flag("--server-insecure", server_insecure, "connect to the stip server WITHOUT TLS");
  serve->add_option("--max-conversations", sf.max_conversations, "conversations kept at once")
      ->check(CLI::Range(1, 1 << 16));
  serve
      ->add_option("--max-prompt-bytes", sf.max_prompt_bytes,
                   "largest prompt a request may carry (RESOURCE_EXHAUSTED beyond; accepts "
                   "KiB/MiB suffixes)")
      ->capture_default_str()
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(size_t{1}, size_t{64} << 20));
  serve->add_option("--http", sf.http,
                    "HOST:PORT for the OpenAI-compatible HTTP API and the chat page (plain HTTP: "
                    "keep it on loopback; port 0: any)");
  serve->add_option("--api-key-file", sf.api_key_file,
                    "require \"Authorization: Bearer KEY\" on /v1/ with the key in this file "
                    "(or $STIP_API_KEY)");
  serve->add_option("--model-name", sf.model_name,
                    "the model's id in the HTTP API (default: from the bundle's config.json)");
  serve
      ->add_option("--http-max-concurrent", sf.http_max_concurrent,
                   "HTTP requests generating at once (429 beyond)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  serve->add_option("--metrics-listen", sf.metrics_listen,
                    "HOST:PORT to serve Prometheus metrics at /metrics");

  // encoders
  stip::ConnectFlags enc_conn[3];
  std::vector<std::string> enc_texts, enc_images;
  std::string enc_file;
  int enc_top_k = 5;
  bool enc_json = false;
  auto* embed = app.add_subcommand("embed", "sentence embeddings (BERT / sentence-transformers)");
  enc_conn[0].Add(embed, /*sessions=*/false);
  auto* embed_text = embed->add_option("--text", enc_texts, "a text to embed (repeatable)");
  embed->add_option("--file", enc_file, "a file with one text per line")->excludes(embed_text);
  embed->add_flag("--json", enc_json,
                  "one JSON object per text: {\"input\": ..., \"embedding\": [...]}");
  auto* fill = app.add_subcommand("fill-mask", "fill the [MASK] of each text (masked LM)");
  enc_conn[1].Add(fill, /*sessions=*/false);
  fill->add_option("--text", enc_texts, "a text with exactly one [MASK] (repeatable)")->required();
  fill->add_option("--top-k", enc_top_k, "candidates per text")->check(CLI::Range(1, 1 << 20));
  fill->add_flag("--json", enc_json,
                 "one JSON object per text: {\"input\": ..., \"top\": [{\"label\", \"score\"}]}");
  auto* classify = app.add_subcommand("classify", "classify images (ViT) or texts (BERT)");
  enc_conn[2].Add(classify, /*sessions=*/false);
  auto* cls_image = classify->add_option("--image", enc_images,
                                         "an image file, PNG or JPEG "
                                         "(repeatable)");
  classify->add_option("--text", enc_texts, "a text (repeatable; text classifiers)")
      ->excludes(cls_image);
  classify->add_option("--top-k", enc_top_k, "labels per input")->check(CLI::Range(1, 1 << 20));
  classify->add_flag("--json", enc_json,
                     "one JSON object per input: {\"input\": ..., \"top\": [{\"label\", "
                     "\"score\"}]}");
  for (auto* sub : {embed, fill, classify}) {
    sub->add_option("--timeout-s",
                    enc_conn[sub == embed  ? 0
                             : sub == fill ? 1
                                           : 2]
                        .timeout_s,
                    "deadline of the Encode call (0: 300 s)")
        ->check(CLI::NonNegativeNumber);
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    std::fprintf(stderr, "stip-client: error: %s (see --help)\n", e.what());
    return 2;
  }
  try {
    if (*reg) return stip::RunRegister(developer, user, token, data_dir, dev_tls);
    if (*fetch) return stip::RunFetch(developer, data_dir, dev_tls);
    if (*gen) return stip::RunGenerate(gen_conn, gen_sampling, gen_chat, prompt, stats);
    if (*chat) return stip::RunChatCommand(chat_conn, chat_sampling, chat_flags);
    if (*render) {
      return stip::RunRenderChat(render_dir, render_messages, !no_generation_prompt, render_ids);
    }
    if (*embed) return stip::RunEmbed(enc_conn[0], enc_texts, enc_file, enc_json);
    if (*fill) return stip::RunFillMask(enc_conn[1], enc_texts, enc_top_k, enc_json);
    if (*classify) {
      return stip::RunClassify(enc_conn[2], enc_images, enc_texts, enc_top_k, enc_json);
    }
    if (*serve) {
      sf.tls.require_client_cert = !sf.tls.ca_file.empty();
      sf.listen_insecure = sf.listen_insecure || serve_conn.insecure;
      serve_conn.insecure = serve_conn.insecure || server_insecure;
      return stip::RunServe(serve_conn, serve_chat, sf);
    }
  } catch (const stip::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "stip-client: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "stip-client: error: internal: %s\n", e.what());
    return 3;
  }
  return 0;
}
