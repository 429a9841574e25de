// The client side of encoder models (BERT, ViT; docs/encoders.md): embed,
// fill-mask and classify, for `stip-client` and the client daemon's Chat
// service.
//
//   text  --tokenizer--> ids --EncoderClient::EmbedTokens--> x
//   image --DecodeImage + Preprocess (preprocessor_config.json)--> pixels
//         --EncoderClient::EmbedImage--> x
//   x' = x[..., p] --Inference.Encode (one call for all inputs)--> o'
//   o = o'[..., argsort(p_c)] (logits) or o'[..., argsort(p)] (hidden states)
//
// The encoder bundle (config.json with id2label, model.safetensors with the
// client-side tensors, client_keys.safetensors, vocab.txt / tokenizer.json +
// tokenizer_config.json for text, preprocessor_config.json for images) is
// what `stip-developer transform` writes as the client bundle.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/arch/model_config.h"
#include "common/keys/model_keys.h"

namespace at {
class Tensor;
}

namespace stip {

class EncoderClient;
class EncoderServer;
class Tokenizer;
struct ImageProcessorConfig;

// True if the bundle (or model) directory holds an encoder (BERT, ViT).
bool IsEncoderBundle(const std::string& dir);

class EncoderBundle {
 public:
  ~EncoderBundle();
  // Loads and cross-checks the bundle: the keys against the config (and
  // `expected_instance`), the tokenizer (text models) or the image processor
  // (image models). Throws stip::Error naming the problem.
  static std::shared_ptr<const EncoderBundle> Load(const std::string& dir,
                                                   const std::string& expected_instance = "");

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const;
  const EncoderClient& client() const { return *client_; }
  const ClientKeys& keys() const { return keys_; }
  const std::string& instance_id() const { return keys_.instance_id; }
  bool reads_images() const;
  const Tokenizer* tokenizer() const { return tokenizer_.get(); }                // text models
  const ImageProcessorConfig* image_processor() const { return images_.get(); }  // images

 private:
  EncoderBundle() = default;
  std::string dir_;
  std::unique_ptr<EncoderClient> client_;
  ClientKeys keys_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ImageProcessorConfig> images_;
};

// Where x' goes: returns o' per input (FP32, still permuted).
class EncodeBackend {
 public:
  virtual ~EncodeBackend() = default;
  virtual std::vector<at::Tensor> Encode(const std::vector<at::Tensor>& x_prime) = 0;
  virtual std::string description() const = 0;
};

struct RemoteEncoderOptions {
  std::string address;  // for messages
  std::string instance_id;
  std::string access_token;  // secret: never logged
  double timeout_s = 300;    // deadline of one Encode call (0: none)
};

// Inference.Encode on a stip server. Errors: RemoteError-like stip::Error
// with the server's code and message.
std::unique_ptr<EncodeBackend> MakeRemoteEncoder(std::shared_ptr<grpc::Channel> channel,
                                                 RemoteEncoderOptions options);
// TESTING ONLY: a transformed server checkpoint run in-process.
std::unique_ptr<EncodeBackend> MakeLocalEncoder(const std::string& server_model_dir);

struct LabelScore {
  std::string label;  // class name (id2label; "LABEL_i" where missing) or the token's text
  int64_t id = 0;     // class id or token id
  double score = 0;   // softmax probability
};

// Inputs are checked before anything is sent: a bad one throws
// kInvalidArgument naming it ("text 2: ...", "image FILE: ...").
class EncoderTasks {
 public:
  EncoderTasks(std::shared_ptr<const EncoderBundle> bundle, std::unique_ptr<EncodeBackend> backend);
  ~EncoderTasks();

  const EncoderBundle& bundle() const { return *bundle_; }

  // Sentence embeddings: the model's pooled output (mean-pooled on the client
  // for a model that returns hidden states), normalized where the model says
  // so. FAILED_PRECONDITION on a model with a head.
  std::vector<std::vector<float>> Embed(const std::vector<std::string>& texts);
  // Each text holds exactly one mask token: its top_k fillers.
  std::vector<std::vector<LabelScore>> FillMask(const std::vector<std::string>& texts, int top_k);
  // Image classifiers: encoded image files (PNG, JPEG); `names` label the
  // inputs in error messages.
  std::vector<std::vector<LabelScore>> ClassifyImages(const std::vector<std::string>& images,
                                                      const std::vector<std::string>& names,
                                                      int top_k);
  // Text classifiers (BertForSequenceClassification).
  std::vector<std::vector<LabelScore>> ClassifyTexts(const std::vector<std::string>& texts,
                                                     int top_k);

 private:
  at::Tensor EmbedText(const std::string& text, const std::string& name) const;
  std::vector<at::Tensor> Run(const std::vector<at::Tensor>& xs);  // o per input, un-permuted
  std::vector<std::vector<LabelScore>> TopLabels(const std::vector<at::Tensor>& logits,
                                                 int top_k) const;

  std::shared_ptr<const EncoderBundle> bundle_;
  std::unique_ptr<EncodeBackend> backend_;
};

}  // namespace stip
