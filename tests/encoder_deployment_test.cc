// Encoders through the three daemons (tests/deployment.h: real processes,
// TLS, the developer's transform, registration): `stip-client classify`,
// `fill-mask` and `embed` against the demo models' references and the plain
// engine, the Inference.Encode call itself, the client daemon's Classify, and
// every bad image and text getting a clear error.
#include <ATen/ATen.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <png.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "client/encoder_tasks.h"
#include "common/arch/model_config.h"
#include "common/client/client_permuter.h"
#include "common/engine/encoder.h"
#include "common/format/checkpoint.h"
#include "common/format/safetensors.h"
#include "common/image/image.h"
#include "common/rpc/tensor_wire.h"
#include "common/tokenizer/tokenizer.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"
#include "stip/v1/stip.grpc.pb.h"
#include "tests/deployment.h"

namespace stip::test {
namespace {

nlohmann::json ReadJson(const std::string& path) { return nlohmann::json::parse(ReadFile(path)); }

std::vector<nlohmann::json> JsonLines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  }
  return lines;
}

std::vector<std::string> ClientArgs(const std::string& command, const std::string& data) {
  return {kClientBin, command, "--data-dir", data};
}

RunResult RunClient(std::vector<std::string> argv, const std::vector<std::string>& extra) {
  argv.insert(argv.end(), extra.begin(), extra.end());
  return test::Run(argv, 300);
}

// Writes `img` as a PNG of libpng color type `color_type` and `bit_depth`
// (gray = the green channel; alpha = opaque) that Pillow's convert("RGB")
// reads as the same picture.
void WritePng(const Image& img, const std::string& path, int color_type, int bit_depth) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  ASSERT_EQ(setjmp(png_jmpbuf(png)), 0);
  png_init_io(png, f);
  png_set_IHDR(png, info, img.width, img.height, bit_depth, color_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  const int channels = color_type == PNG_COLOR_TYPE_GRAY         ? 1
                       : color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                       : color_type == PNG_COLOR_TYPE_RGB        ? 3
                                                                 : 4;
  const int bytes = bit_depth / 8;
  std::vector<uint8_t> row(static_cast<size_t>(img.width * channels * bytes));
  for (int y = 0; y < img.height; ++y) {
    size_t k = 0;
    for (int x = 0; x < img.width; ++x) {
      std::vector<int> v;
      if (channels <= 2) {
        v.push_back(img.at(y, x, 1));
      } else {
        for (int c = 0; c < 3; ++c) v.push_back(img.at(y, x, c));
      }
      if (channels == 2 || channels == 4) v.push_back(255);
      for (int value : v) {
        if (bytes == 2) {
          // 8 -> 16 bits: colour and alpha samples scaled (Pillow keeps the
          // high byte); 16-bit gray as is (Pillow reads it as mode I and
          // clamps to 0..255, docs/images.md), so both mean the same image.
          const int wide = color_type == PNG_COLOR_TYPE_GRAY ? value : value * 257;
          row[k++] = static_cast<uint8_t>(wide >> 8);
          row[k++] = static_cast<uint8_t>(wide & 0xff);
        } else {
          row[k++] = static_cast<uint8_t>(value);
        }
      }
    }
    png_write_row(png, row.data());
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(f);
}

std::string LabelOf(const nlohmann::json& config, int64_t id) {
  return config["id2label"][std::to_string(id)].get<std::string>();
}

// ---- ViT -----------------------------------------------------------------------

TEST(EncoderDeployment, VitDigitsClassifiesEverySampleAndRefusesBadImages) {
  const std::string model = ModelDir("vit-digits");
  Deployment d;
  const std::string data = d.Setup(model, {"alice"}).at(0);
  const nlohmann::json ref = ReadJson(model + "/reference.json");
  const nlohmann::json config = ReadJson(model + "/config.json");

  // Every sample in one call (one Encode request).
  std::vector<std::string> args = ClientArgs("classify", data);
  for (const auto& s : ref["samples"]) {
    args.push_back("--image");
    args.push_back(model + "/" + s["file"].get<std::string>());
  }
  args.insert(args.end(), {"--json", "--top-k", "3"});
  RunResult r = test::Run(args, 300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<nlohmann::json> lines = JsonLines(r.out);
  ASSERT_EQ(lines.size(), ref["samples"].size()) << r.out;
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto& s = ref["samples"][i];
    const auto& line = lines[i];
    EXPECT_EQ(line["input"], model + "/" + s["file"].get<std::string>());
    ASSERT_EQ(line["top"].size(), 3u);
    EXPECT_EQ(line["top"][0]["label"], LabelOf(config, s["label"].get<int64_t>())) << line;
    // The reference logits' softmax, within fp32 noise.
    at::Tensor logits = at::tensor(s["logits"].get<std::vector<double>>(), at::kDouble);
    const double want = at::softmax(logits, 0).max().item<double>();
    EXPECT_NEAR(line["top"][0]["score"].get<double>(), want, 1e-4) << line;
    EXPECT_GE(line["top"][0]["score"].get<double>(), line["top"][1]["score"].get<double>());
  }

  // Any mode works: grayscale, gray + alpha, RGBA, 16-bit, each the same digit.
  const std::string first = model + "/" + ref["samples"][0]["file"].get<std::string>();
  const std::string want_label = LabelOf(config, ref["samples"][0]["label"].get<int64_t>());
  const Image img = LoadImageFile(first);
  struct Variant {
    const char* name;
    int color_type, bit_depth;
  };
  std::vector<std::string> variant_files;
  for (Variant v :
       {Variant{"gray8", PNG_COLOR_TYPE_GRAY, 8},
        Variant{"gray-alpha8", PNG_COLOR_TYPE_GRAY_ALPHA, 8},
        Variant{"rgba8", PNG_COLOR_TYPE_RGBA, 8}, Variant{"rgb16", PNG_COLOR_TYPE_RGB, 16},
        Variant{"gray16", PNG_COLOR_TYPE_GRAY, 16}, Variant{"rgba16", PNG_COLOR_TYPE_RGBA, 16}}) {
    const std::string path = d.dir() + "/" + v.name + ".png";
    WritePng(img, path, v.color_type, v.bit_depth);
    variant_files.push_back(path);
  }
  args = ClientArgs("classify", data);
  for (const std::string& f : variant_files) args.insert(args.end(), {"--image", f});
  args.push_back("--json");
  r = test::Run(args, 300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  lines = JsonLines(r.out);
  ASSERT_EQ(lines.size(), variant_files.size());
  for (const auto& line : lines) EXPECT_EQ(line["top"][0]["label"], want_label) << line;

  // Bad images: exit status 2 and a message naming the file and the problem.
  const std::string png = ReadFile(first);
  struct Bad {
    std::string name, bytes, needle;
  };
  std::string huge = png;  // IHDR claims 100000 x 100000 (CRC not fixed: refused either way)
  for (int i = 0; i < 4; ++i) {
    huge[16 + i] = "\x00\x01\x86\xa0"[i];
    huge[20 + i] = "\x00\x01\x86\xa0"[i];
  }
  for (const Bad& b : {Bad{"truncated.png", png.substr(0, png.size() / 2), "truncated"},
                       Bad{"text.png", "hello, world\n", "not a PNG or JPEG"},
                       Bad{"empty.png", "", "empty"}, Bad{"huge.png", huge, "PNG"}}) {
    const std::string path = d.dir() + "/" + b.name;
    WriteFileAtomic(path, b.bytes, 0644);
    RunResult bad = RunClient(ClientArgs("classify", data), {"--image", path, "--json"});
    EXPECT_EQ(bad.exit_code, 2) << b.name << ": " << bad.out << bad.err;
    EXPECT_NE(bad.err.find(b.name), std::string::npos) << bad.err;
    EXPECT_NE(bad.err.find(b.needle), std::string::npos) << b.name << ": " << bad.err;
    EXPECT_EQ(bad.out, "");
  }
  RunResult missing = RunClient(ClientArgs("classify", data), {"--image", d.dir() + "/nope.png"});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("no such file"), std::string::npos) << missing.err;
  // A text command on an image model.
  RunResult wrong = RunClient(ClientArgs("fill-mask", data), {"--text", "a [MASK]"});
  EXPECT_EQ(wrong.exit_code, 2);
  EXPECT_NE(wrong.err.find("masked-LM"), std::string::npos) << wrong.err;

  // The client daemon's Classify.
  const std::string daemon = d.StartChatDaemon(data);
  auto stub = v1::Chat::NewStub(grpc::CreateChannel(daemon, grpc::InsecureChannelCredentials()));
  v1::ClassifyRequest req;
  req.add_images(png);
  req.add_images(ReadFile(variant_files[3]));
  req.set_top_k(2);
  v1::ClassifyResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = stub->Classify(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.results_size(), 2);
  for (const auto& res : resp.results()) {
    ASSERT_EQ(res.top_size(), 2);
    EXPECT_EQ(res.top(0).label(), want_label);
  }
  v1::ClassifyRequest bad_req;
  bad_req.add_images("not an image");
  grpc::ClientContext ctx2;
  s = stub->Classify(&ctx2, bad_req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("not a PNG or JPEG"), std::string::npos) << s.error_message();
  grpc::ClientContext ctx3;
  v1::GenerateRequest gen;
  gen.set_prompt("hello");
  auto reader = stub->Generate(&ctx3, gen);
  v1::GenerateResponse g;
  while (reader->Read(&g)) {
  }
  s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

// ---- BERT ----------------------------------------------------------------------

at::Tensor FloatTensor(const v1::Tensor& t) { return FromWire(t).to(at::kFloat); }

TEST(EncoderDeployment, BertKjvFillsEveryMaskAsTheReference) {
  const std::string model = ModelDir("bert-kjv");
  Deployment d;
  // All reference examples fit one call; one more sequence does not.
  const std::string data = d.Setup(model, {"bob"}, {"--max-encode-sequences", "8"}).at(0);
  const nlohmann::json ref = ReadJson(model + "/reference.json");

  std::vector<std::string> args = ClientArgs("fill-mask", data);
  for (const auto& ex : ref["fill_mask"]) args.insert(args.end(), {"--text", ex["text"]});
  args.push_back("--json");
  RunResult r = test::Run(args, 300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<nlohmann::json> lines = JsonLines(r.out);
  ASSERT_EQ(lines.size(), ref["fill_mask"].size());
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto& ex = ref["fill_mask"][i];
    EXPECT_EQ(lines[i]["input"], ex["text"]);
    ASSERT_EQ(lines[i]["top"].size(), 5u) << lines[i];
    for (size_t k = 0; k < 5; ++k) {
      EXPECT_EQ(lines[i]["top"][k]["label"], ex["top5"][k]["token_str"])
          << ex["text"] << " rank " << k;
      EXPECT_NEAR(lines[i]["top"][k]["score"].get<double>(), ex["top5"][k]["score"].get<double>(),
                  2e-5);
    }
  }

  // Bad texts: each refused before anything is sent, naming the text.
  const std::string long_text = [] {
    std::string t;
    for (int i = 0; i < 400; ++i) t += "and the lord said ";
    return t + "[MASK].";
  }();
  struct Bad {
    std::string text, needle;
  };
  for (const Bad& b : {Bad{"In the beginning God created the heaven.", "has 0 [MASK] tokens"},
                       Bad{"the [MASK] and the [MASK]", "has 2 [MASK] tokens"},
                       Bad{long_text, "too long"}, Bad{"", "is empty"}}) {
    RunResult bad = RunClient(ClientArgs("fill-mask", data), {"--text", b.text, "--json"});
    EXPECT_EQ(bad.exit_code, 2) << bad.out << bad.err;
    EXPECT_NE(bad.err.find(b.needle), std::string::npos) << bad.err;
    EXPECT_EQ(bad.out, "");
  }
  RunResult wrong = RunClient(ClientArgs("embed", data), {"--text", "in the beginning"});
  EXPECT_EQ(wrong.exit_code, 2);
  EXPECT_NE(wrong.err.find("without a head"), std::string::npos) << wrong.err;
  wrong = RunClient(ClientArgs("classify", data), {"--image", model + "/config.json"});
  EXPECT_EQ(wrong.exit_code, 2);
  EXPECT_NE(wrong.err.find("reads text, not images"), std::string::npos) << wrong.err;

  // Inference.Encode itself: sequences of different lengths in one request
  // answer what each gets alone; bad sequences get INVALID_ARGUMENT naming
  // them; sessions are refused on an encoder.
  const UserCredentials creds = LoadUserCredentials(data);
  auto bundle = EncoderBundle::Load(data + "/bundle");
  auto channel = MakeChannel(d.server_address(), d.ClientTls(), "test");
  auto stub = v1::Inference::NewStub(channel);
  std::vector<at::Tensor> xs;
  for (const auto& ex : ref["fill_mask"]) {
    at::Tensor x = bundle->client().EmbedTokens(ex["input_ids"].get<std::vector<int64_t>>());
    xs.push_back(PermuteHidden(x, bundle->keys().p));
  }
  auto encode = [&](const std::vector<at::Tensor>& in, v1::EncodeResponse* resp) {
    v1::EncodeRequest req;
    req.set_instance_id(creds.instance_id);
    req.set_access_token(creds.access_token);
    for (const at::Tensor& x : in) ToWire(x.to(at::kFloat).contiguous(), req.add_sequences());
    grpc::ClientContext ctx;
    return stub->Encode(&ctx, req, resp);
  };
  v1::EncodeResponse together;
  ASSERT_TRUE(encode(xs, &together).ok());
  EXPECT_EQ(together.output(), "token_logits");
  ASSERT_EQ(together.outputs_size(), static_cast<int>(xs.size()));
  for (size_t i = 0; i < xs.size(); ++i) {
    v1::EncodeResponse alone;
    ASSERT_TRUE(encode({xs[i]}, &alone).ok());
    at::Tensor a = FloatTensor(alone.outputs(0));
    at::Tensor b = FloatTensor(together.outputs(static_cast<int>(i)));
    ASSERT_EQ(a.sizes(), b.sizes());
    EXPECT_EQ(a.size(0), xs[i].size(0));
    EXPECT_LE((a - b).abs().max().item<double>(),
              1e-5 * std::max(1.0, a.abs().max().item<double>()))
        << "sequence " << i;
  }
  v1::EncodeResponse resp;
  const int64_t d_model = bundle->config().hidden_size;
  grpc::Status s = encode({xs[0], at::zeros({3, d_model + 1})}, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("sequence 1 of 2"), std::string::npos) << s.error_message();
  s = encode({at::zeros({bundle->config().max_positions + 1, d_model})}, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("at most"), std::string::npos) << s.error_message();
  s = encode({}, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_EQ(xs.size(), 8u);
  std::vector<at::Tensor> nine = xs;
  nine.push_back(xs[0]);
  s = encode(nine, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(s.error_message().find("--max-encode-sequences"), std::string::npos)
      << s.error_message();
  {
    v1::EncodeRequest req;
    req.set_instance_id(creds.instance_id);
    req.set_access_token("not a token");
    ToWire(xs[0], req.add_sequences());
    grpc::ClientContext ctx;
    EXPECT_EQ(stub->Encode(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    auto session = stub->Session(&ctx);
    v1::SessionRequest open;
    open.mutable_open()->set_instance_id(creds.instance_id);
    open.mutable_open()->set_access_token(creds.access_token);
    session->Write(open);
    session->WritesDone();
    v1::SessionResponse sr;
    while (session->Read(&sr)) {
    }
    s = session->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(s.error_message().find("encoder"), std::string::npos) << s.error_message();
  }
}

// A sentence-transformers model made from bert-kjv (a BertModel with mean
// pooling and Normalize, its tokenizer): `embed` through the daemons equals
// the plain engine's vector computed here.
TEST(EncoderDeployment, EmbedEqualsThePlainModel) {
  const std::string kjv = ModelDir("bert-kjv");
  Deployment d;
  const std::string st = d.dir() + "/st";
  std::filesystem::create_directories(st + "/1_Pooling");
  std::filesystem::create_directories(st + "/2_Normalize");
  const nlohmann::json kjv_config = ReadJson(kjv + "/config.json");
  nlohmann::json config = kjv_config;
  config["architectures"] = {"BertModel"};
  WriteFileAtomic(st + "/config.json", config.dump(2), 0644);
  for (const char* f : {"vocab.txt", "tokenizer_config.json"}) {
    WriteFileAtomic(st + "/" + f, ReadFile(kjv + "/" + f), 0644);
  }
  WriteFileAtomic(st + "/modules.json", R"([
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])",
                  0644);
  WriteFileAtomic(st + "/1_Pooling/config.json",
                  nlohmann::json{{"word_embedding_dimension", kjv_config["hidden_size"]},
                                 {"pooling_mode_cls_token", false},
                                 {"pooling_mode_mean_tokens", true}}
                      .dump(),
                  0644);
  {
    Checkpoint ckpt = Checkpoint::Open(kjv);
    std::vector<TensorBytes> bare;
    for (const std::string& name : ckpt.Names()) {
      if (name.rfind("bert.", 0) != 0) continue;  // the MLM head is not part of a BertModel
      TensorRef t = ckpt.Get(name);
      bare.push_back({name.substr(5), t.info->dtype, t.info->shape, t.data});
    }
    WriteSafetensors(st + "/model.safetensors", bare);
  }
  {
    RunResult t = test::Run({kDeveloperBin, "verify", "--model", st, "--json"}, 300);
    ASSERT_EQ(t.exit_code, 0) << t.out << t.err;
  }
  std::string data;
  try {
    data = d.Setup(st, {"carol"}).at(0);
  } catch (const std::exception& e) {
    for (const std::string& log : d.Logs()) ADD_FAILURE() << log << ":\n" << ReadFile(log);
    FAIL() << e.what();
  }

  const std::vector<std::string> texts = {"In the beginning God created the heaven and the earth.",
                                          "Jesus wept.", "And God said, Let there be light"};
  std::vector<std::string> args = ClientArgs("embed", data);
  for (const std::string& t : texts) args.insert(args.end(), {"--text", t});
  args.push_back("--json");
  RunResult r = test::Run(args, 300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<nlohmann::json> lines = JsonLines(r.out);
  ASSERT_EQ(lines.size(), texts.size());

  EncoderClient client = EncoderClient::Load(st);
  EncoderServer plain = EncoderServer::Load(st);
  ASSERT_EQ(plain.output(), EncoderOutput::kPooled);
  std::unique_ptr<Tokenizer> tok = Tokenizer::FromDirectory(st);
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(lines[i]["input"], texts[i]);
    at::Tensor want = client.Finish(plain.Encode({client.EmbedTokens(tok->Encode(texts[i]))})[0]);
    std::vector<float> got = lines[i]["embedding"].get<std::vector<float>>();
    ASSERT_EQ(static_cast<int64_t>(got.size()), want.numel());
    at::Tensor g = at::tensor(got, at::kFloat);
    EXPECT_LE((g - want.to(at::kFloat)).abs().max().item<double>(), 1e-5) << texts[i];
    EXPECT_NEAR(g.norm().item<double>(), 1.0, 1e-5);
  }
  // --file: one text per line, the same vectors.
  WriteFileAtomic(d.dir() + "/texts.txt", texts[0] + "\n\n" + texts[1] + "\n", 0644);
  r = RunClient(ClientArgs("embed", data), {"--file", d.dir() + "/texts.txt", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<nlohmann::json> from_file = JsonLines(r.out);
  ASSERT_EQ(from_file.size(), 2u);
  EXPECT_EQ(from_file[1]["embedding"], lines[1]["embedding"]);
  RunResult bad = RunClient(ClientArgs("fill-mask", data), {"--text", "the [MASK]"});
  EXPECT_EQ(bad.exit_code, 2);
}

}  // namespace
}  // namespace stip::test
