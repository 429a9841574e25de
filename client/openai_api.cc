#include "client/openai_api.h"

#include <openssl/rand.h>

#include <cmath>
#include <cstdio>

#include "client/remote_session.h"
#include "common/error.h"
#include "common/tokenizer/tokenizer.h"

namespace stip {

namespace {

using nlohmann::json;

// The value of `key` if present and not null.
const json* Field(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

double NumberIn(const json& body, const char* key, double lo, double hi, double fallback) {
  const json* v = Field(body, key);
  if (!v) return fallback;
  if (!v->is_number()) throw BadRequest(std::string(key) + " must be a number", key);
  const double d = v->get<double>();
  if (!(d >= lo && d <= hi)) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s must be between %g and %g", key, lo, hi);
    throw BadRequest(buf, key);
  }
  return d;
}

int64_t IntegerIn(const json& body, const char* key, int64_t lo, int64_t hi, int64_t fallback) {
  const json* v = Field(body, key);
  if (!v) return fallback;
  if (!v->is_number_integer() && !v->is_number_unsigned()) {
    throw BadRequest(std::string(key) + " must be an integer", key);
  }
  const int64_t i =
      v->is_number_unsigned() && v->get<uint64_t>() > INT64_MAX ? INT64_MAX : v->get<int64_t>();
  if (i < lo || i > hi) {
    throw BadRequest(std::string(key) + " must be between " + std::to_string(lo) + " and " +
                         std::to_string(hi) + " (got " + std::to_string(i) + ")",
                     key);
  }
  return i;
}

bool Bool(const json& body, const char* key) {
  const json* v = Field(body, key);
  if (!v) return false;
  if (!v->is_boolean()) throw BadRequest(std::string(key) + " must be true or false", key);
  return v->get<bool>();
}

// A message's content: a string, or an array of {"type": "text", "text"} parts.
std::string MessageContent(const json& content, size_t index) {
  const std::string param = "messages[" + std::to_string(index) + "].content";
  if (content.is_null()) return "";
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    throw BadRequest(param + " must be a string or an array of parts", param);
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string()) {
      throw BadRequest(param + ": only text parts ({\"type\": \"text\", \"text\": ...}) are " +
                           "supported by this model",
                       param);
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

std::string TokenText(const Tokenizer& tokenizer, int64_t id) { return tokenizer.Decode({id}); }

json Bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

}  // namespace

ApiError BadRequest(const std::string& message, const std::string& param, const std::string& code) {
  ApiError e;
  e.status = 400;
  e.message = message;
  e.type = "invalid_request_error";
  e.param = param;
  e.code = code;
  return e;
}

CompletionRequest ParseCompletionRequest(const json& body, bool chat, const ApiLimits& limits) {
  if (!body.is_object()) throw BadRequest("the request body must be a JSON object");
  CompletionRequest r;
  r.chat = chat;
  const json* model = Field(body, "model");
  if (!model || !model->is_string()) {
    throw BadRequest("you must provide a model parameter (a string)", "model");
  }
  r.model = model->get<std::string>();

  if (chat) {
    const json* messages = Field(body, "messages");
    if (!messages || !messages->is_array() || messages->empty()) {
      throw BadRequest("messages must be a non-empty array", "messages");
    }
    for (size_t i = 0; i < messages->size(); ++i) {
      const json& m = (*messages)[i];
      const std::string param = "messages[" + std::to_string(i) + "]";
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
        throw BadRequest(param + " must be an object with a role", param);
      }
      ChatMessage msg;
      msg.role = m["role"].get<std::string>();
      if (msg.role != "system" && msg.role != "user" && msg.role != "assistant" &&
          msg.role != "developer" && msg.role != "tool") {
        throw BadRequest(param + ".role " + QuoteForMessage(msg.role) + " is not one of system, " +
                             "developer, user, assistant, tool",
                         param + ".role");
      }
      if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
        throw BadRequest(param + ".tool_calls: tools are not supported", param + ".tool_calls");
      }
      msg.content = MessageContent(m.contains("content") ? m["content"] : json(), i);
      r.messages.push_back(std::move(msg));
    }
    for (const char* unsupported : {"tools", "functions", "response_format", "audio"}) {
      const json* v = Field(body, unsupported);
      if (v && !(v->is_array() && v->empty())) {
        // response_format {"type": "text"} is the default: accepted.
        if (std::string(unsupported) == "response_format" && v->is_object() &&
            v->value("type", "") == "text") {
          continue;
        }
        throw BadRequest(std::string(unsupported) + " is not supported by stip-client",
                         unsupported);
      }
    }
  } else {
    const json* prompt = Field(body, "prompt");
    if (!prompt) throw BadRequest("you must provide a prompt", "prompt");
    if (prompt->is_string()) {
      r.prompt = prompt->get<std::string>();
    } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
      r.prompt = (*prompt)[0].get<std::string>();
    } else {
      throw BadRequest(
          "prompt must be a string (or an array of one string; batches and token-id prompts are "
          "not supported)",
          "prompt");
    }
    r.echo = Bool(body, "echo");
    if (Field(body, "suffix")) throw BadRequest("suffix is not supported", "suffix");
    if (IntegerIn(body, "best_of", 1, 1, 1) != 1) throw BadRequest("best_of must be 1", "best_of");
  }

  const size_t prompt_bytes = chat ? RenderChatPrompt(r.messages).size() : r.prompt.size();
  if (prompt_bytes > limits.max_prompt_bytes) {
    ApiError e = BadRequest("the prompt of " + std::to_string(prompt_bytes) +
                                " bytes exceeds this daemon's limit of " +
                                std::to_string(limits.max_prompt_bytes) + " bytes",
                            chat ? "messages" : "prompt", "context_length_exceeded");
    throw e;
  }

  if (IntegerIn(body, "n", 1, 1 << 20, 1) != 1) {
    throw BadRequest("n must be 1: stip-client generates one choice per request", "n");
  }
  // max_completion_tokens supersedes max_tokens.
  const char* max_key =
      Field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  r.options.max_new_tokens =
      static_cast<int>(IntegerIn(body, max_key, 1, limits.max_tokens_limit, 0));

  GenerateOptions& o = r.options;
  const double temperature = NumberIn(body, "temperature", 0, 2, 1);
  o.sampling.greedy = temperature == 0;
  o.sampling.temperature = temperature;
  o.sampling.top_p = NumberIn(body, "top_p", 0, 1, 1);
  if (o.sampling.top_p == 0) throw BadRequest("top_p must be greater than 0", "top_p");
  // OpenAI's penalties are additive; only 0 (off) is exact here.
  for (const char* penalty : {"presence_penalty", "frequency_penalty"}) {
    if (NumberIn(body, penalty, -2, 2, 0) != 0) {
      throw BadRequest(std::string(penalty) + " is not supported (only 0)", penalty);
    }
  }
  if (const json* seed = Field(body, "seed")) {
    if (!seed->is_number_integer()) throw BadRequest("seed must be an integer", "seed");
    o.sampling.seed = static_cast<uint64_t>(seed->get<int64_t>());
  }
  if (const json* stop = Field(body, "stop")) {
    if (stop->is_string()) {
      o.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array() && stop->size() <= 4) {
      for (const json& s : *stop) {
        if (!s.is_string()) throw BadRequest("stop must hold strings", "stop");
        o.stop.push_back(s.get<std::string>());
      }
    } else {
      throw BadRequest("stop must be a string or an array of up to 4 strings", "stop");
    }
    for (const std::string& s : o.stop) {
      if (s.empty()) throw BadRequest("stop strings must not be empty", "stop");
    }
  }
  r.stream = Bool(body, "stream");
  if (const json* so = Field(body, "stream_options")) {
    if (!so->is_object()) throw BadRequest("stream_options must be an object", "stream_options");
    if (!r.stream) {
      throw BadRequest("stream_options is only allowed when stream is true", "stream_options");
    }
    r.include_usage = Bool(*so, "include_usage");
  }
  if (chat) {
    r.logprobs = Bool(body, "logprobs");
    r.top_logprobs = static_cast<int>(IntegerIn(body, "top_logprobs", 0, 20, 0));
    if (r.top_logprobs > 0 && !r.logprobs) {
      throw BadRequest("top_logprobs needs logprobs set to true", "top_logprobs");
    }
  } else if (Field(body, "logprobs")) {
    r.logprobs = true;
    r.top_logprobs = static_cast<int>(IntegerIn(body, "logprobs", 0, 5, 0));
  }
  if (const json* lb = Field(body, "logit_bias"); lb && !(lb->is_object() && lb->empty())) {
    throw BadRequest("logit_bias is not supported", "logit_bias");
  }
  return r;
}

std::string RenderChatPrompt(const std::vector<ChatMessage>& messages) {
  std::string prompt;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i > 0) prompt += "\n";
    prompt += messages[i].content;
  }
  return prompt;
}

TokenLogprob ComputeLogprob(const at::Tensor& logits, int64_t id, int top) {
  at::Tensor lp = at::log_softmax(logits.reshape({-1}).to(at::kDouble), 0);
  TokenLogprob t;
  t.id = id;
  t.logprob = lp[id].item<double>();
  if (top > 0) {
    auto best = lp.topk(std::min<int64_t>(top, lp.size(0)));
    at::Tensor values = std::get<0>(best), indices = std::get<1>(best);
    for (int64_t i = 0; i < values.size(0); ++i) {
      t.top.emplace_back(indices[i].item<int64_t>(), values[i].item<double>());
    }
  }
  return t;
}

json ChatLogprobsJson(const Tokenizer& tokenizer, const std::vector<TokenLogprob>& lps) {
  json content = json::array();
  for (const TokenLogprob& t : lps) {
    const std::string text = TokenText(tokenizer, t.id);
    json top = json::array();
    for (const auto& [id, lp] : t.top) {
      const std::string s = TokenText(tokenizer, id);
      top.push_back({{"token", s}, {"logprob", lp}, {"bytes", Bytes(s)}});
    }
    content.push_back(
        {{"token", text}, {"logprob", t.logprob}, {"bytes", Bytes(text)}, {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

json CompletionLogprobsJson(const Tokenizer& tokenizer, const std::vector<TokenLogprob>& lps,
                            size_t text_offset) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  for (const TokenLogprob& t : lps) {
    const std::string text = TokenText(tokenizer, t.id);
    tokens.push_back(text);
    token_logprobs.push_back(t.logprob);
    json alternatives = json::object();
    for (const auto& [id, lp] : t.top) alternatives[TokenText(tokenizer, id)] = lp;
    top.push_back(alternatives);
    offsets.push_back(text_offset);
    text_offset += text.size();
  }
  return {{"tokens", tokens},
          {"token_logprobs", token_logprobs},
          {"top_logprobs", top},
          {"text_offset", offsets}};
}

std::string OpenAiFinishReason(const std::string& reason) {
  if (reason == "eos" || reason == "stop") return "stop";
  return reason;
}

json ApiError::ToJson() const {
  return {{"error",
           {{"message", message},
            {"type", type},
            {"param", param.empty() ? json() : json(param)},
            {"code", code.empty() ? json() : json(code)}}}};
}

ApiError ApiErrorFromCurrentException() {
  ApiError e;
  try {
    throw;
  } catch (const ApiError& a) {
    return a;
  } catch (const Error& s) {
    // One mapping for local errors and the stip server's (a failed gRPC
    // status arrives as the stip::Error of its code: common/rpc/status.h).
    e.message = s.what();
    switch (s.code()) {
      case ErrorCode::kInvalidArgument:
      case ErrorCode::kOutOfRange:
        e.status = 400;
        e.type = "invalid_request_error";
        break;
      case ErrorCode::kResourceExhausted:
        // The stip server is out of sessions or KV memory (a prompt over the
        // context is refused with 400 before generating: http_api.cc).
        e.status = 429;
        e.type = "rate_limit_error";
        e.code = "upstream_resource_exhausted";
        break;
      case ErrorCode::kUnavailable:
        e.status = 503;
        e.type = "server_error";
        e.code = "upstream_unavailable";
        break;
      case ErrorCode::kDeadlineExceeded:
        e.status = 504;
        e.type = "timeout_error";
        e.code = "upstream_timeout";
        break;
      case ErrorCode::kUnauthenticated:
      case ErrorCode::kPermissionDenied:
        e.status = 403;
        e.type = "permission_error";
        e.code = "upstream_refused";
        break;
      case ErrorCode::kCancelled:
        e.status = 499;
        e.type = "server_error";
        e.code = "cancelled";
        break;
      case ErrorCode::kNotFound:
        e.status = 404;
        e.type = "invalid_request_error";
        e.code = "not_found";
        break;
      case ErrorCode::kUnimplemented:
        e.status = 400;
        e.type = "invalid_request_error";
        e.code = "unsupported";
        break;
      case ErrorCode::kFailedPrecondition:
        e.status = 409;
        e.type = "server_error";
        if (!s.reason().empty()) e.code = s.reason();
        break;
      default:
        e.status = 500;
        e.type = "server_error";
    }
    return e;
  } catch (const std::exception& x) {
    e.message = std::string("internal error: ") + x.what();
  } catch (...) {
    e.message = "internal error";
  }
  return e;
}

std::string DumpJson(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string NewCompletionId(const std::string& prefix) {
  unsigned char b[12];
  if (RAND_bytes(b, sizeof b) != 1) throw Internal("RAND_bytes failed");
  static const char* hex = "0123456789abcdef";
  std::string id = prefix;
  for (unsigned char c : b) {
    id += hex[c >> 4];
    id += hex[c & 15];
  }
  return id;
}

}  // namespace stip
