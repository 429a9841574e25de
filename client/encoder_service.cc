#include "client/encoder_service.h"

#include <spdlog/spdlog.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "common/rpc/status.h"

namespace stip {

namespace {

constexpr int kDefaultTopK = 5;

// Checks the size of a call's inputs (counts and bytes) before any work.
template <typename Container>
void CheckInputs(const Container& inputs, const EncoderServiceOptions& o, const char* what) {
  if (inputs.empty()) throw InvalidArgument(std::string("no ") + what + " in the request");
  if (static_cast<size_t>(inputs.size()) > o.max_inputs) {
    throw ResourceExhausted(std::to_string(inputs.size()) + " " + what + " exceed the limit of " +
                            std::to_string(o.max_inputs) + " per call");
  }
  size_t bytes = 0;
  for (const auto& s : inputs) bytes += s.size();
  if (bytes > o.max_input_bytes) {
    throw ResourceExhausted(std::to_string(bytes) + " bytes of " + what + " exceed the limit of " +
                            std::to_string(o.max_input_bytes) + " per call");
  }
}

int TopK(int32_t k) {
  if (k < 0) throw InvalidArgument("top_k is negative");
  return k == 0 ? kDefaultTopK : k;
}

void ToProto(const std::vector<LabelScore>& top, v1::Predictions* out) {
  for (const LabelScore& s : top) {
    v1::Prediction* p = out->add_top();
    p->set_label(s.label);
    p->set_id(s.id);
    p->set_score(s.score);
  }
}

template <typename F>
grpc::Status Answer(const char* method, F&& body) {
  try {
    body();
    return grpc::Status::OK;
  } catch (...) {
    grpc::Status s = CurrentExceptionToStatus();
    spdlog::info("{}: {}", method, s.error_message());
    return s;
  }
}

}  // namespace

EncoderChatService::EncoderChatService(std::shared_ptr<EncoderTasks> tasks,
                                       EncoderServiceOptions options)
    : tasks_(std::move(tasks)), options_(options) {}

grpc::Status EncoderChatService::Generate(grpc::ServerContext*, const v1::GenerateRequest*,
                                          grpc::ServerWriter<v1::GenerateResponse>*) {
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                      "this client serves an encoder model (" +
                          tasks_->bundle().config().model_type +
                          "): it does not generate text; use Embed, FillMask or Classify");
}

grpc::Status EncoderChatService::Embed(grpc::ServerContext*, const v1::EmbedRequest* request,
                                       v1::EmbedResponse* response) {
  return Answer("Embed", [&] {
    CheckInputs(request->texts(), options_, "texts");
    std::vector<std::string> texts(request->texts().begin(), request->texts().end());
    for (const std::vector<float>& v : tasks_->Embed(texts)) {
      auto* e = response->add_embeddings();
      e->mutable_values()->Add(v.begin(), v.end());
    }
  });
}

grpc::Status EncoderChatService::FillMask(grpc::ServerContext*, const v1::FillMaskRequest* request,
                                          v1::FillMaskResponse* response) {
  return Answer("FillMask", [&] {
    CheckInputs(request->texts(), options_, "texts");
    const int k = TopK(request->top_k());
    std::vector<std::string> texts(request->texts().begin(), request->texts().end());
    for (const auto& top : tasks_->FillMask(texts, k)) ToProto(top, response->add_results());
  });
}

grpc::Status EncoderChatService::Classify(grpc::ServerContext*, const v1::ClassifyRequest* request,
                                          v1::ClassifyResponse* response) {
  return Answer("Classify", [&] {
    const int k = TopK(request->top_k());
    if (request->images_size() > 0 && request->texts_size() > 0) {
      throw InvalidArgument("a Classify request carries images or texts, not both");
    }
    std::vector<std::vector<LabelScore>> results;
    if (request->texts_size() > 0) {
      CheckInputs(request->texts(), options_, "texts");
      std::vector<std::string> texts(request->texts().begin(), request->texts().end());
      results = tasks_->ClassifyTexts(texts, k);
    } else {
      CheckInputs(request->images(), options_, "images");
      std::vector<std::string> images(request->images().begin(), request->images().end());
      std::vector<std::string> names;
      for (size_t i = 0; i < images.size(); ++i) names.push_back(std::to_string(i));
      results = tasks_->ClassifyImages(images, names, k);
    }
    for (const auto& top : results) ToProto(top, response->add_results());
  });
}

}  // namespace stip
