// The client daemon's Chat service for an encoder bundle (`stip-client serve`
// on a BERT or ViT model): Embed, FillMask and Classify for local programs
// (docs/encoders.md). Generate answers FAILED_PRECONDITION: an encoder does
// not generate text.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <memory>

#include "client/encoder_tasks.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip {

struct EncoderServiceOptions {
  size_t max_inputs = 256;                    // texts or images per call
  size_t max_input_bytes = size_t{64} << 20;  // all inputs of one call together
};

class EncoderChatService final : public v1::Chat::Service {
 public:
  EncoderChatService(std::shared_ptr<EncoderTasks> tasks, EncoderServiceOptions options = {});

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Embed(grpc::ServerContext* context, const v1::EmbedRequest* request,
                     v1::EmbedResponse* response) override;
  grpc::Status FillMask(grpc::ServerContext* context, const v1::FillMaskRequest* request,
                        v1::FillMaskResponse* response) override;
  grpc::Status Classify(grpc::ServerContext* context, const v1::ClassifyRequest* request,
                        v1::ClassifyResponse* response) override;

 private:
  std::shared_ptr<EncoderTasks> tasks_;
  EncoderServiceOptions options_;
};

}  // namespace stip
