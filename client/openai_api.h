// The OpenAI HTTP API's wire format, apart from the HTTP server
// (client/http_api.h): parsing and checking the request bodies of
// /v1/chat/completions and /v1/completions into GenerateOptions, rendering a
// chat's messages into the prompt text, building response objects, stream
// chunks and log-probabilities, and mapping errors onto OpenAI's error shape
// {"error": {"message", "type", "param", "code"}} with an HTTP status.
// Nothing here logs: prompts and answers never reach a log.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "client/generator.h"

namespace stip {

class Tokenizer;

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant" | "developer" | "tool"
  std::string content;
};

// What /v1/chat/completions and /v1/completions accept.
struct CompletionRequest {
  bool chat = true;
  std::string model;
  std::vector<ChatMessage> messages;  // chat
  std::string prompt;                 // completions
  GenerateOptions options;            // max_new_tokens is 0 when the request gave none
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;
  int top_logprobs = 0;  // chat: 0..20; completions: logprobs=N (0..5)
  bool echo = false;     // completions: the prompt before the answer
};

struct ApiLimits {
  int max_tokens_limit = 8192;        // largest max_tokens
  size_t max_prompt_bytes = 1 << 20;  // the rendered prompt
};

// Throws ApiError (400, naming the parameter) for anything malformed or
// unsupported (n > 1, a tool call, an image part, ...).
CompletionRequest ParseCompletionRequest(const nlohmann::json& body, bool chat,
                                         const ApiLimits& limits);

// The prompt text of a chat for a model without a chat template (or with
// serve --raw): the plain concatenation the Chat service uses, the messages'
// contents joined with "\n" (a single user message is the prompt as it is).
// With a template, the HTTP API renders the messages with it (common/chat).
std::string RenderChatPrompt(const std::vector<ChatMessage>& messages);

// One generated token's log-probability and the `top` most likely tokens
// (log-softmax of the full logits, computed in FP64: exact, the client holds
// all of them).
struct TokenLogprob {
  int64_t id = 0;
  double logprob = 0;
  std::vector<std::pair<int64_t, double>> top;
};
TokenLogprob ComputeLogprob(const at::Tensor& logits, int64_t id, int top);

// The logprobs object of a chat choice: {"content": [{token, logprob, bytes,
// top_logprobs: [...]}, ...]}.
nlohmann::json ChatLogprobsJson(const Tokenizer& tokenizer, const std::vector<TokenLogprob>& lps);
// The legacy completions shape: {tokens, token_logprobs, top_logprobs, text_offset}.
nlohmann::json CompletionLogprobsJson(const Tokenizer& tokenizer,
                                      const std::vector<TokenLogprob>& lps, size_t text_offset);

// "stop" (an EOS or a stop string), "length", or the reason as it is.
std::string OpenAiFinishReason(const std::string& generator_reason);

// An error in OpenAI's shape.
struct ApiError {
  int status = 500;
  std::string message;
  std::string type = "server_error";  // invalid_request_error, authentication_error, ...
  std::string param;                  // "" -> null
  std::string code;                   // "" -> null
  nlohmann::json ToJson() const;
};
ApiError BadRequest(const std::string& message, const std::string& param = "",
                    const std::string& code = "");

// Maps the exception being handled (call in a catch block) onto an ApiError:
// stip::Error codes (local ones and the stip server's, whose gRPC status
// becomes a stip::Error: common/rpc/status.h) to HTTP statuses. The one place
// the mapping lives.
ApiError ApiErrorFromCurrentException();

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string DumpJson(const nlohmann::json& j);

// "chatcmpl-" + 24 random hex digits.
std::string NewCompletionId(const std::string& prefix);

}  // namespace stip
