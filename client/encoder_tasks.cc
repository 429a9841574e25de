#include "client/encoder_tasks.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>

#include "common/engine/encoder.h"
#include "common/error.h"
#include "common/image/image.h"
#include "common/image/image_processor.h"
#include "common/keys/permutation.h"
#include "common/rpc/status.h"
#include "common/rpc/tensor_wire.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/files.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip {

namespace {

at::Tensor IndexTensor(const Permutation& p) {
  return at::tensor(std::vector<int64_t>(p.begin(), p.end()), at::kLong);
}

std::string TextName(size_t i, const std::string& text) {
  return "text " + std::to_string(i) + " (" + QuoteForMessage(text, 48) + ")";
}

class RemoteEncoder final : public EncodeBackend {
 public:
  RemoteEncoder(std::shared_ptr<grpc::Channel> channel, RemoteEncoderOptions o)
      : stub_(v1::Inference::NewStub(channel)), o_(std::move(o)) {}

  std::vector<at::Tensor> Encode(const std::vector<at::Tensor>& x_prime) override {
    v1::EncodeRequest req;
    req.set_instance_id(o_.instance_id);
    req.set_access_token(o_.access_token);
    for (const at::Tensor& x : x_prime) ToWire(x.to(at::kCPU, at::kFloat), req.add_sequences());
    grpc::ClientContext ctx;
    if (o_.timeout_s > 0) {
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::duration_cast<std::chrono::system_clock::duration>(
                           std::chrono::duration<double>(o_.timeout_s)));
    }
    v1::EncodeResponse resp;
    grpc::Status s = stub_->Encode(&ctx, req, &resp);
    if (!s.ok()) {
      throw ErrorFromStatus(s, ctx, "stip server " + o_.address + ": " + s.error_message());
    }
    if (resp.outputs_size() != static_cast<int>(x_prime.size())) {
      throw Error(ErrorCode::kInternal, "stip server " + o_.address + " answered " +
                                            std::to_string(resp.outputs_size()) + " outputs for " +
                                            std::to_string(x_prime.size()) + " inputs");
    }
    std::vector<at::Tensor> out;
    for (const v1::Tensor& t : resp.outputs()) out.push_back(FromWire(t).to(at::kFloat));
    return out;
  }
  std::string description() const override { return "stip server " + o_.address; }

 private:
  std::unique_ptr<v1::Inference::Stub> stub_;
  RemoteEncoderOptions o_;
};

class LocalEncoder final : public EncodeBackend {
 public:
  explicit LocalEncoder(const std::string& dir)
      : dir_(dir), server_(std::make_unique<EncoderServer>(EncoderServer::Load(dir))) {}
  std::vector<at::Tensor> Encode(const std::vector<at::Tensor>& x_prime) override {
    std::vector<at::Tensor> out;
    for (at::Tensor& o : server_->Encode(x_prime)) out.push_back(o.to(at::kFloat));
    return out;
  }
  std::string description() const override { return "in-process model " + dir_; }

 private:
  std::string dir_;
  std::unique_ptr<EncoderServer> server_;
};

}  // namespace

bool IsEncoderBundle(const std::string& dir) {
  try {
    return LoadModelConfig(dir).encoder;
  } catch (const Error&) {
    return false;
  }
}

std::unique_ptr<EncodeBackend> MakeRemoteEncoder(std::shared_ptr<grpc::Channel> channel,
                                                 RemoteEncoderOptions options) {
  return std::make_unique<RemoteEncoder>(std::move(channel), std::move(options));
}

std::unique_ptr<EncodeBackend> MakeLocalEncoder(const std::string& server_model_dir) {
  return std::make_unique<LocalEncoder>(server_model_dir);
}

// ---- bundle -------------------------------------------------------------------

EncoderBundle::~EncoderBundle() = default;

const ModelConfig& EncoderBundle::config() const { return client_->config(); }
bool EncoderBundle::reads_images() const { return client_->config().patch_size > 0; }

std::shared_ptr<const EncoderBundle> EncoderBundle::Load(const std::string& dir,
                                                         const std::string& expected_instance) {
  std::shared_ptr<EncoderBundle> b(new EncoderBundle());
  b->dir_ = dir;
  b->client_ = std::make_unique<EncoderClient>(EncoderClient::Load(dir));
  const ModelConfig& c = b->client_->config();
  b->keys_ = LoadClientKeys(JoinPath(dir, "client_keys.safetensors"));
  if (!IsPermutation(b->keys_.p, c.hidden_size)) {
    throw InvalidArgument(dir + ": client key p is not a permutation of the hidden size " +
                          std::to_string(c.hidden_size));
  }
  if (c.output_size() > 0 && !IsPermutation(b->keys_.p_c, c.output_size())) {
    throw InvalidArgument(dir + ": client key p_c is not a permutation of the " +
                          std::to_string(c.output_size()) + " outputs");
  }
  if (!c.stip_instance.empty() && c.stip_instance != b->keys_.instance_id) {
    throw InvalidArgument(dir + ": config.json names instance " + c.stip_instance +
                          " but the client keys belong to instance " + b->keys_.instance_id);
  }
  if (!expected_instance.empty() && expected_instance != b->keys_.instance_id) {
    throw FailedPrecondition(dir + ": the bundle belongs to instance " + b->keys_.instance_id +
                             ", the credentials to instance " + expected_instance +
                             " (register again)");
  }
  if (b->reads_images()) {
    b->images_ = std::make_unique<ImageProcessorConfig>(LoadImageProcessorConfig(dir));
  } else {
    b->tokenizer_ = Tokenizer::FromDirectory(dir);
    if (b->tokenizer_->vocab_size() > c.vocab_size) {
      throw InvalidArgument(
          dir + ": the tokenizer has " + std::to_string(b->tokenizer_->vocab_size()) +
          " tokens, more than the model's vocabulary of " + std::to_string(c.vocab_size));
    }
  }
  return b;
}

// ---- tasks --------------------------------------------------------------------

EncoderTasks::EncoderTasks(std::shared_ptr<const EncoderBundle> bundle,
                           std::unique_ptr<EncodeBackend> backend)
    : bundle_(std::move(bundle)), backend_(std::move(backend)) {}

EncoderTasks::~EncoderTasks() = default;

at::Tensor EncoderTasks::EmbedText(const std::string& text, const std::string& name) const {
  const Tokenizer* tok = bundle_->tokenizer();
  if (!tok) {
    throw FailedPrecondition("model " + bundle_->config().model_type +
                             " reads images, not text (use `classify --image`)");
  }
  if (text.empty()) throw InvalidArgument(name + " is empty");
  const std::vector<int64_t> ids = tok->Encode(text);
  const int64_t max = bundle_->config().max_positions;
  if (max > 0 && static_cast<int64_t>(ids.size()) > max) {
    throw InvalidArgument(name + " is too long: " + std::to_string(ids.size()) +
                          " tokens, the model takes at most " + std::to_string(max));
  }
  return bundle_->client().EmbedTokens(ids);
}

std::vector<at::Tensor> EncoderTasks::Run(const std::vector<at::Tensor>& xs) {
  c10::InferenceMode guard;
  const at::Tensor p = IndexTensor(bundle_->keys().p);
  std::vector<at::Tensor> x_prime;
  x_prime.reserve(xs.size());
  for (const at::Tensor& x : xs) x_prime.push_back(x.index_select(-1, p.to(x.device())));
  std::vector<at::Tensor> o_prime = backend_->Encode(x_prime);
  const EncoderOutput kind = EncoderOutputOf(bundle_->config());
  const at::Tensor inverse = IndexTensor(
      InversePermutation(OutputIsLogits(kind) ? bundle_->keys().p_c : bundle_->keys().p));
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < o_prime.size(); ++i) {
    const at::Tensor& o = o_prime[i];
    if (o.size(-1) != inverse.size(0)) {
      throw InvalidArgument("the server's output " + std::to_string(i) + " has " +
                            std::to_string(o.size(-1)) + " columns, the bundle's keys " +
                            std::to_string(inverse.size(0)));
    }
    out.push_back(o.index_select(-1, inverse));
  }
  return out;
}

std::vector<std::vector<LabelScore>> EncoderTasks::TopLabels(const std::vector<at::Tensor>& logits,
                                                             int top_k) const {
  std::vector<std::vector<LabelScore>> all;
  const auto& names = bundle_->config().labels;
  for (const at::Tensor& row : logits) {
    at::Tensor probs = at::softmax(row.to(at::kDouble), -1);
    const int64_t k = std::min<int64_t>(std::max(1, top_k), probs.size(-1));
    auto [vals, idx] = at::topk(probs, k);
    std::vector<LabelScore> top;
    for (int64_t j = 0; j < k; ++j) {
      LabelScore s;
      s.id = idx[j].item<int64_t>();
      s.score = vals[j].item<double>();
      if (s.id < static_cast<int64_t>(names.size()) && !names[s.id].empty()) {
        s.label = names[static_cast<size_t>(s.id)];
      } else {
        s.label = "LABEL_" + std::to_string(s.id);
      }
      top.push_back(std::move(s));
    }
    all.push_back(std::move(top));
  }
  return all;
}

std::vector<std::vector<float>> EncoderTasks::Embed(const std::vector<std::string>& texts) {
  const EncoderOutput kind = EncoderOutputOf(bundle_->config());
  if (kind != EncoderOutput::kPooled && kind != EncoderOutput::kHidden) {
    throw FailedPrecondition(std::string("embed needs a model without a head (BertModel or a "
                                         "sentence-transformers checkpoint); this one outputs ") +
                             EncoderOutputName(kind));
  }
  if (texts.empty()) throw InvalidArgument("embed: no texts");
  std::vector<at::Tensor> xs;
  for (size_t i = 0; i < texts.size(); ++i)
    xs.push_back(EmbedText(texts[i], TextName(i, texts[i])));
  std::vector<at::Tensor> out = Run(xs);
  std::vector<std::vector<float>> result;
  for (at::Tensor& o : out) {
    at::Tensor v = kind == EncoderOutput::kHidden ? o.mean(0) : o;
    v = bundle_->client().Finish(v).to(at::kFloat).contiguous();
    result.emplace_back(v.data_ptr<float>(), v.data_ptr<float>() + v.numel());
  }
  return result;
}

std::vector<std::vector<LabelScore>> EncoderTasks::FillMask(const std::vector<std::string>& texts,
                                                            int top_k) {
  if (EncoderOutputOf(bundle_->config()) != EncoderOutput::kTokenLogits) {
    throw FailedPrecondition(
        "fill-mask needs a masked-LM model (BertForMaskedLM); this one outputs " +
        std::string(EncoderOutputName(EncoderOutputOf(bundle_->config()))));
  }
  if (texts.empty()) throw InvalidArgument("fill-mask: no texts");
  const Tokenizer* tok = bundle_->tokenizer();
  const std::optional<int64_t> mask = tok ? tok->SpecialTokenId("mask") : std::nullopt;
  if (!mask) throw FailedPrecondition("the bundle's tokenizer has no mask token");
  const std::string mask_text = tok->Decode({*mask});
  std::vector<at::Tensor> xs;
  std::vector<int64_t> where;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string name = TextName(i, texts[i]);
    if (texts[i].empty()) throw InvalidArgument(name + " is empty");
    // The mask token is typed as text ("[MASK]"): special tokens are read as
    // such here, as Hugging Face's fill-mask pipeline does.
    EncodeOptions options;
    options.allow_special = true;
    const std::vector<int64_t> ids = tok->Encode(texts[i], options);
    const std::vector<size_t> at_mask = PositionsOf(ids, *mask);
    if (at_mask.size() != 1) {
      throw InvalidArgument(name + " has " + std::to_string(at_mask.size()) + " " + mask_text +
                            " tokens; fill-mask needs exactly one");
    }
    const int64_t max = bundle_->config().max_positions;
    if (max > 0 && static_cast<int64_t>(ids.size()) > max) {
      throw InvalidArgument(name + " is too long: " + std::to_string(ids.size()) +
                            " tokens, the model takes at most " + std::to_string(max));
    }
    xs.push_back(bundle_->client().EmbedTokens(ids));
    where.push_back(static_cast<int64_t>(at_mask[0]));
  }
  std::vector<at::Tensor> out = Run(xs);
  std::vector<at::Tensor> rows;
  for (size_t i = 0; i < out.size(); ++i) rows.push_back(out[i][where[i]]);
  std::vector<std::vector<LabelScore>> top = TopLabels(rows, top_k);
  for (auto& list : top) {
    for (LabelScore& s : list) s.label = tok->Decode({s.id});
  }
  return top;
}

std::vector<std::vector<LabelScore>> EncoderTasks::ClassifyImages(
    const std::vector<std::string>& images, const std::vector<std::string>& names, int top_k) {
  if (!bundle_->reads_images()) {
    throw FailedPrecondition("model " + bundle_->config().model_type +
                             " reads text, not images (use `classify --text`)");
  }
  if (EncoderOutputOf(bundle_->config()) != EncoderOutput::kSequenceLogits) {
    throw FailedPrecondition("classify needs a classifier (ViTForImageClassification)");
  }
  if (images.empty()) throw InvalidArgument("classify: no images");
  const ImageProcessorConfig& pc = *bundle_->image_processor();
  std::vector<at::Tensor> xs;
  for (size_t i = 0; i < images.size(); ++i) {
    const std::string name = i < names.size() ? "image " + names[i] : "image " + std::to_string(i);
    try {
      Image img = DecodeImage(images[i]);
      PixelValues pv = Preprocess(img, pc);
      at::Tensor pixels =
          at::from_blob(pv.data.data(), {pv.channels, pv.height, pv.width}, at::kFloat).clone();
      xs.push_back(bundle_->client().EmbedImage(pixels));
    } catch (const Error& e) {
      throw Error(e.code(), name + ": " + e.what());
    }
  }
  return TopLabels(Run(xs), top_k);
}

std::vector<std::vector<LabelScore>> EncoderTasks::ClassifyTexts(
    const std::vector<std::string>& texts, int top_k) {
  if (EncoderOutputOf(bundle_->config()) != EncoderOutput::kSequenceLogits) {
    throw FailedPrecondition("classify needs a classifier (BertForSequenceClassification)");
  }
  if (texts.empty()) throw InvalidArgument("classify: no texts");
  std::vector<at::Tensor> xs;
  for (size_t i = 0; i < texts.size(); ++i)
    xs.push_back(EmbedText(texts[i], TextName(i, texts[i])));
  return TopLabels(Run(xs), top_k);
}

}  // namespace stip
