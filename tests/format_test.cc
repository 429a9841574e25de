// Tests of the torch-free tensor-file layer: dtypes, safetensors reading and
// writing, and sharded checkpoints.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/error.h"
#include "common/format/checkpoint.h"
#include "common/format/dtype.h"
#include "common/format/safetensors.h"
#include "tests/temp_dir.h"

namespace stip {
namespace {

using test::TempDir;

namespace fs = std::filesystem;

const std::string kLlamaDir = std::string(STIP_TEST_DATA_DIR) + "/hf-reference/llama";
const std::string kLlamaModel = kLlamaDir + "/model.safetensors";
const std::string kLlamaReference = kLlamaDir + "/reference.safetensors";
const std::string kKjvLlamaModel = std::string(STIP_MODELS_DIR) + "/kjv-llama/model.safetensors";

// ---------------------------------------------------------------------------
// Helpers

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

// Reads `n` bytes at `pos` with an ifstream: an independent check on the parser.
std::string ReadRaw(const std::string& path, uint64_t pos, size_t n) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(pos));
  std::string buf(n, '\0');
  in.read(buf.data(), static_cast<std::streamsize>(n));
  EXPECT_EQ(static_cast<size_t>(in.gcount()), n) << path << " at " << pos;
  return buf;
}

uint64_t LE64(const std::string& bytes, size_t pos = 0) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(bytes[pos + i]);
  return v;
}

uint32_t LE32(const void* p) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  return b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
}

uint16_t LE16(const void* p) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  return static_cast<uint16_t>(b[0] | (b[1] << 8));
}

std::string LengthPrefix(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

// A safetensors image: header text as given, then `data_size` bytes of data.
std::string MakeFile(const std::string& header, size_t data_size) {
  std::string data(data_size, '\0');
  for (size_t i = 0; i < data_size; ++i) data[i] = static_cast<char>(i * 7 + 1);
  return LengthPrefix(header.size()) + header + data;
}

// Expects `f` to throw a stip::Error with `code` whose message holds every needle.
void ExpectError(const std::function<void()>& f, ErrorCode code,
                 std::initializer_list<std::string> needles) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(ErrorCodeName(e.code()), std::string(ErrorCodeName(code))) << e.what();
    for (const std::string& n : needles) {
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message lacks '" << n << "': " << e.what();
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-stip exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "no exception thrown";
}

#define EXPECT_STIP_ERROR(stmt, code, ...)         \
  do {                                             \
    SCOPED_TRACE(#stmt);                           \
    ExpectError([&] { stmt; }, code, __VA_ARGS__); \
  } while (0)

// Parses a header with FromBytes and expects a kDataLoss naming `needles`.
void ExpectCorrupt(const std::string& header, size_t data_size,
                   std::initializer_list<std::string> needles) {
  SCOPED_TRACE(header);
  ExpectError([&] { SafetensorsFile::FromBytes(MakeFile(header, data_size), "bad.safetensors"); },
              ErrorCode::kDataLoss, needles);
}

std::string Bytes(const SafetensorsFile& f, const TensorInfo& t) {
  return std::string(reinterpret_cast<const char*>(f.Data(t)), t.nbytes);
}

// ---------------------------------------------------------------------------
// DType

TEST(DType, NamesSizesAndParse) {
  const std::vector<std::tuple<DType, const char*, size_t>> all = {
      {DType::kF64, "F64", 8},   {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},
      {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
      {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
      {DType::kBool, "BOOL", 1},
  };
  for (const auto& [dtype, name, size] : all) {
    EXPECT_STREQ(DTypeName(dtype), name);
    EXPECT_EQ(DTypeSize(dtype), size) << name;
    EXPECT_EQ(ParseDType(name), dtype) << name;
  }
}

TEST(DType, ParseRejectsUnknown) {
  EXPECT_STIP_ERROR(ParseDType("F8_E4M3", "w.safetensors: tensor \"x\""),
                    ErrorCode::kInvalidArgument,
                    {"w.safetensors: tensor \"x\"", "unknown dtype \"F8_E4M3\"", "BF16"});
  EXPECT_STIP_ERROR(ParseDType("f32"), ErrorCode::kInvalidArgument, {"\"f32\""});
  EXPECT_STIP_ERROR(ParseDType(""), ErrorCode::kInvalidArgument, {"unknown dtype"});
}

TEST(DType, NumElements) {
  EXPECT_EQ(NumElements({}), 1);
  EXPECT_EQ(NumElements({2, 11, 64}), 2 * 11 * 64);
  EXPECT_EQ(NumElements({0, 5}), 0);
  EXPECT_EQ(NumElements({INT64_MAX}), INT64_MAX);
  EXPECT_STIP_ERROR(NumElements({2, -1}, "t"), ErrorCode::kInvalidArgument,
                    {"t: ", "negative dimension -1", "[2, -1]"});
  EXPECT_STIP_ERROR(NumElements({int64_t{1} << 32, int64_t{1} << 32}, "t"),
                    ErrorCode::kInvalidArgument, {"t: ", "2^63-1"});
  EXPECT_STIP_ERROR(NumElements({INT64_MAX, 2}), ErrorCode::kInvalidArgument, {"2^63-1"});
}

TEST(DType, ShapeString) {
  EXPECT_EQ(ShapeString({}), "[]");
  EXPECT_EQ(ShapeString({7}), "[7]");
  EXPECT_EQ(ShapeString({2, 11, 64}), "[2, 11, 64]");
}

// ---------------------------------------------------------------------------
// Reading real files

TEST(SafetensorsRead, LlamaFixture) {
  auto f = SafetensorsFile::Open(kLlamaModel);
  EXPECT_EQ(f->path(), kLlamaModel);
  ASSERT_EQ(f->tensors().size(), 21u);
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));

  // Tensors come in offset order, contiguous here.
  uint64_t next = 0;
  for (const TensorInfo& t : f->tensors()) {
    EXPECT_EQ(t.offset, next) << t.name;
    EXPECT_EQ(t.dtype, DType::kF32) << t.name;
    EXPECT_EQ(t.nbytes, static_cast<uint64_t>(t.numel()) * 4) << t.name;
    next = t.offset + t.nbytes;
  }
  EXPECT_EQ(next, 605952u);
  EXPECT_EQ(f->tensors().front().name, "lm_head.weight");
  EXPECT_EQ(f->tensors().back().name, "model.norm.weight");

  const TensorInfo& q = f->Get("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(q.dtype, DType::kF32);
  EXPECT_EQ(q.shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(q.numel(), 4096);
  EXPECT_EQ(q.offset, 408576u);
  EXPECT_EQ(q.nbytes, 16384u);
  EXPECT_EQ(f->Find("model.layers.1.self_attn.k_proj.weight")->shape,
            (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(f->Get("lm_head.weight").shape, (std::vector<int64_t>{509, 64}));
  EXPECT_EQ(f->Find("model.layers.2.self_attn.q_proj.weight"), nullptr);

  // Independent parse: the header length and raw bytes read with ifstream.
  const uint64_t header_len = LE64(ReadRaw(kLlamaModel, 0, 8));
  ASSERT_EQ(header_len, 2144u);
  const uint64_t data_start = 8 + header_len;
  EXPECT_EQ(Bytes(*f, q), ReadRaw(kLlamaModel, data_start + 408576, 16384));
  // Known values: first and last element of q_proj, norm weight (ones), lm_head[0][1].
  EXPECT_EQ(LE32(f->Data(q)), 0xb8aebb66u);
  EXPECT_EQ(LE32(f->Data(q) + 4095 * 4), 0xbd4446b4u);
  float first;
  std::memcpy(&first, f->Data(q), 4);
  EXPECT_FLOAT_EQ(first, -8.331872e-05f);
  const TensorInfo& norm = f->Get("model.norm.weight");
  float one;
  std::memcpy(&one, f->Data(norm), 4);
  EXPECT_EQ(one, 1.0f);
  EXPECT_EQ(LE32(f->Data(f->Get("lm_head.weight")) + 4), 0x39ba459cu);
  // Every tensor matches the raw file bytes.
  const std::string all = ReadFile(kLlamaModel);
  for (const TensorInfo& t : f->tensors()) {
    EXPECT_EQ(Bytes(*f, t), all.substr(data_start + t.offset, t.nbytes)) << t.name;
  }
}

TEST(SafetensorsRead, GetMissingTensorNamesTensorAndFile) {
  auto f = SafetensorsFile::Open(kLlamaModel);
  EXPECT_STIP_ERROR(f->Get("model.layers.9.mlp.up_proj.weight"), ErrorCode::kNotFound,
                    {kLlamaModel, "\"model.layers.9.mlp.up_proj.weight\""});
}

TEST(SafetensorsRead, KjvLlamaF16) {
  auto f = SafetensorsFile::Open(kKjvLlamaModel);
  ASSERT_EQ(f->tensors().size(), 39u);
  for (const TensorInfo& t : f->tensors()) EXPECT_EQ(t.dtype, DType::kF16) << t.name;
  const TensorInfo& emb = f->Get("model.embed_tokens.weight");
  EXPECT_EQ(emb.shape, (std::vector<int64_t>{4096, 256}));
  EXPECT_EQ(emb.nbytes, 4096u * 256 * 2);
  const TensorInfo& norm = f->Get("model.norm.weight");
  EXPECT_EQ(norm.shape, (std::vector<int64_t>{256}));
  EXPECT_EQ(LE16(f->Data(norm)), 0x4125);  // 2.572265625
  EXPECT_EQ(LE16(f->Data(norm) + 2), 0x415a);
  EXPECT_EQ(LE16(f->Data(norm) + 6), 0x413a);
  const TensorInfo& q = f->Get("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(LE16(f->Data(q)), 0xaea4);  // -0.10376
  EXPECT_EQ(LE16(f->Data(q) + 2), 0xa977);
  const uint64_t data_start = 8 + LE64(ReadRaw(kKjvLlamaModel, 0, 8));
  EXPECT_EQ(data_start, 8u + 4136);
  EXPECT_EQ(Bytes(*f, q), ReadRaw(kKjvLlamaModel, data_start + q.offset, q.nbytes));
}

TEST(SafetensorsRead, ReferenceI64) {
  auto f = SafetensorsFile::Open(kLlamaReference);
  EXPECT_TRUE(f->metadata().empty());
  const TensorInfo& ids = f->Get("input_ids");
  EXPECT_EQ(ids.dtype, DType::kI64);
  EXPECT_EQ(ids.shape, (std::vector<int64_t>{2, 11}));
  const std::vector<int64_t> expected = {426, 307, 249, 30,  418, 234, 346, 399, 324, 279, 29,
                                         227, 291, 455, 372, 225, 43,  7,   221, 402, 453, 398};
  std::vector<int64_t> got(22);
  std::memcpy(got.data(), f->Data(ids), 22 * sizeof(int64_t));
  EXPECT_EQ(got, expected);
  EXPECT_EQ(f->Get("logits").shape, (std::vector<int64_t>{2, 11, 509}));
  EXPECT_EQ(f->Get("logits").dtype, DType::kF32);
}

TEST(SafetensorsRead, OpenMissingOrNotAFile) {
  TempDir dir;
  EXPECT_STIP_ERROR(SafetensorsFile::Open(dir.File("nope.safetensors")), ErrorCode::kNotFound,
                    {"nope.safetensors"});
  EXPECT_STIP_ERROR(SafetensorsFile::Open(dir.path()), ErrorCode::kInvalidArgument,
                    {"not a regular file"});
  WriteFile(dir.File("empty.safetensors"), "");
  EXPECT_STIP_ERROR(SafetensorsFile::Open(dir.File("empty.safetensors")), ErrorCode::kDataLoss,
                    {"empty.safetensors", "shorter than the 8-byte header length"});
}

// ---------------------------------------------------------------------------
// Corrupt inputs

TEST(SafetensorsCorrupt, TruncatedFixture) {
  const std::string all = ReadFile(kLlamaModel);
  const size_t header_end = 8 + 2144;
  std::vector<size_t> cuts;
  for (size_t n = 0; n < header_end + 16; ++n) cuts.push_back(n);  // every cut in the header
  for (size_t n = header_end + 16; n < all.size(); n += 4099) cuts.push_back(n);
  cuts.push_back(all.size() - 1);
  for (size_t n : cuts) {
    SCOPED_TRACE("cut at " + std::to_string(n));
    ExpectError([&] { SafetensorsFile::FromBytes(all.substr(0, n), "cut.safetensors"); },
                ErrorCode::kDataLoss, {"cut.safetensors"});
  }
  // The intact image parses.
  EXPECT_EQ(SafetensorsFile::FromBytes(all, "whole")->tensors().size(), 21u);

  // The same through the mmap path.
  TempDir dir;
  for (size_t n : {size_t{3}, size_t{100}, header_end, size_t{300000}, all.size() - 1}) {
    const std::string path = dir.File("cut" + std::to_string(n) + ".safetensors");
    WriteFile(path, all.substr(0, n));
    EXPECT_STIP_ERROR(SafetensorsFile::Open(path), ErrorCode::kDataLoss, {path});
  }
  // Specific messages: cut in the data names the last tensor.
  EXPECT_STIP_ERROR(SafetensorsFile::FromBytes(all.substr(0, all.size() - 1), "m.safetensors"),
                    ErrorCode::kDataLoss,
                    {"m.safetensors: tensor \"model.norm.weight\"", "data_offsets [605696, 605952)",
                     "runs past the end of the 605951-byte data section"});
  EXPECT_STIP_ERROR(SafetensorsFile::FromBytes(all.substr(0, 1000), "m.safetensors"),
                    ErrorCode::kDataLoss, {"m.safetensors: header length 2144 runs past the end"});
}

TEST(SafetensorsCorrupt, HeaderLength) {
  std::string img = MakeFile("{}", 0);
  EXPECT_EQ(SafetensorsFile::FromBytes(img)->tensors().size(), 0u);
  // Past the end of the file.
  img = LengthPrefix(3) + "{}";
  EXPECT_STIP_ERROR(SafetensorsFile::FromBytes(img, "x.st"), ErrorCode::kDataLoss,
                    {"x.st: header length 3 runs past the end of the 10-byte file"});
  // Absurd lengths, including one where 8 + length overflows.
  for (uint64_t n : {uint64_t{200} << 20, ~uint64_t{0}, ~uint64_t{0} - 7}) {
    img = LengthPrefix(n) + "{}";
    EXPECT_STIP_ERROR(SafetensorsFile::FromBytes(img, "x.st"), ErrorCode::kDataLoss,
                      {"x.st: header length " + std::to_string(n), "exceeds the limit"});
  }
  // Zero-length header is not JSON.
  EXPECT_STIP_ERROR(SafetensorsFile::FromBytes(LengthPrefix(0), "x.st"), ErrorCode::kDataLoss,
                    {"x.st: header is not valid JSON"});
}

TEST(SafetensorsCorrupt, BadJson) {
  ExpectCorrupt("{not json", 0, {"bad.safetensors: header is not valid JSON"});
  ExpectCorrupt("{\"a\": {\"dtype\": \"F32\"", 0, {"not valid JSON"});
  ExpectCorrupt("{} trailing", 0, {"not valid JSON"});
  ExpectCorrupt(std::string("{\"a\xff\": 1}"), 0, {"not valid JSON"});  // invalid UTF-8
  ExpectCorrupt("[1, 2]", 0, {"header is a JSON array, expected an object"});
  ExpectCorrupt("\"str\"", 0, {"expected an object"});
  // Deep nesting must not overflow the stack.
  ExpectCorrupt(std::string(200000, '['), 0, {"not valid JSON"});
  ExpectCorrupt("{\"x\": {\"dtype\": \"F32\", \"shape\": " + std::string(100000, '[') +
                    std::string(100000, ']') + ", \"data_offsets\": [0, 4]}}",
                4, {"tensor \"x\"", "\"shape\" holds a JSON array"});
}

TEST(SafetensorsCorrupt, EntryStructure) {
  ExpectCorrupt(R"({"x": 5})", 0, {"tensor \"x\": entry is a JSON number, expected an object"});
  ExpectCorrupt(R"({"x": {"shape": [1], "data_offsets": [0, 4]}})", 4,
                {"tensor \"x\": missing \"dtype\""});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "data_offsets": [0, 4]}})", 4,
                {"tensor \"x\": missing \"shape\""});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": [1]}})", 4,
                {"tensor \"x\": missing \"data_offsets\""});
  ExpectCorrupt(R"({"x": {"dtype": 5, "shape": [1], "data_offsets": [0, 4]}})", 4,
                {"\"dtype\" is a JSON number, expected a string"});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}})", 4,
                {"\"shape\" is a JSON string"});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})", 4,
                {"\"shape\" holds a JSON number"});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}})", 4,
                {"\"shape\" holds a JSON string"});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4]}})", 4,
                {"\"data_offsets\" must be an array [begin, end], got an array of 1 elements"});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": {"a": 0}}})", 4,
                {"\"data_offsets\" must be an array", "got a JSON object"});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 4,
                {"non-negative integers, got -4"});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}})", 4,
                {"non-negative integers, got a JSON number"});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e30]}})", 4,
                {"non-negative integers"});
}

TEST(SafetensorsCorrupt, DTypeAndShape) {
  ExpectCorrupt(R"({"x": {"dtype": "F8_E5M2", "shape": [1], "data_offsets": [0, 1]}})", 1,
                {"bad.safetensors: tensor \"x\": unknown dtype \"F8_E5M2\""});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 0]}})", 0,
                {"tensor \"x\": negative dimension -1 in shape [2, -1]"});
  // 2^62 * 4 elements overflows int64.
  ExpectCorrupt(
      R"({"x": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})", 0,
      {"tensor \"x\"", "more than 2^63-1 elements"});
  // 2^62 F64 elements fit int64 but need 2^65 bytes.
  ExpectCorrupt(
      R"({"x": {"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", 0,
      {"tensor \"x\"", "needs more than 2^64-1 bytes"});
  // A dim beyond int64.
  ExpectCorrupt(
      R"({"x": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 0]}})", 0,
      {"dimension 18446744073709551615 in \"shape\" is too large"});
}

TEST(SafetensorsCorrupt, Offsets) {
  // The size mismatch message spelled out in full.
  ExpectCorrupt(R"({"x.weight": {"dtype": "F32", "shape": [5, 6], "data_offsets": [0, 100]}})", 200,
                {"bad.safetensors: tensor \"x.weight\": data_offsets [0, 100) but F32 [5, 6] "
                 "needs 120 bytes"});
  ExpectCorrupt(R"({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 8]}})", 8,
                {"BF16 [3] needs 6 bytes"});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 16,
                {"data_offsets [8, 4) has begin > end"});
  ExpectCorrupt(R"({"x": {"dtype": "F32", "shape": [30], "data_offsets": [0, 120]}})", 100,
                {"tensor \"x\": data_offsets [0, 120) runs past the end of the 100-byte data "
                 "section"});
  ExpectCorrupt(R"({"x": {"dtype": "U8", "shape": [1],
                          "data_offsets": [18446744073709551614, 18446744073709551615]}})",
                8, {"data_offsets [18446744073709551614, 18446744073709551615) runs past the end"});
  ExpectCorrupt(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                32, {"tensor \"b\" at data_offsets [8, 24) overlaps tensor \"a\" at [0, 16)"});
  // Identical ranges overlap too.
  ExpectCorrupt(R"({"a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}})",
                8, {"overlaps"});
  // Overlap with a tensor that is not the previous one in offset order.
  ExpectCorrupt(R"({"a": {"dtype": "U8", "shape": [100], "data_offsets": [0, 100]},
                    "b": {"dtype": "U8", "shape": [10], "data_offsets": [10, 20]},
                    "c": {"dtype": "U8", "shape": [10], "data_offsets": [50, 60]}})",
                100, {"overlaps tensor \"a\""});
}

TEST(SafetensorsCorrupt, MetadataAndDuplicates) {
  ExpectCorrupt(R"({"__metadata__": ["a"]})", 0,
                {"\"__metadata__\" is a JSON array, expected an object of strings"});
  ExpectCorrupt(R"({"__metadata__": {"format": 1}})", 0,
                {"\"__metadata__\" value for key \"format\" is a JSON number"});
  ExpectCorrupt(R"({"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                    "x": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
                2, {"header has duplicate key \"x\""});
  ExpectCorrupt(R"({"__metadata__": {"k": "a", "k": "b"}})", 0, {"duplicate key \"k\""});
}

TEST(SafetensorsCorrupt, ErrorMessagesEscapeNames) {
  // Control characters in a name do not end up raw in the message.
  try {
    SafetensorsFile::FromBytes(
        MakeFile(R"({"a\nb": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", 4), "e");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor \"a\\x0ab\""), std::string::npos) << e.what();
  }
}

TEST(SafetensorsRead, EdgeCasesAccepted) {
  // Empty tensors (begin == end, even inside another's range), a scalar, a
  // gap, trailing bytes, a space-padded header, unknown extra keys.
  const std::string header = R"({"__metadata__": {},
      "empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [4, 4]},
      "scalar": {"dtype": "I64", "shape": [], "data_offsets": [0, 8], "extra": true},
      "after_gap": {"dtype": "U8", "shape": [3], "data_offsets": [16, 19]},
      "empty_end": {"dtype": "BOOL", "shape": [0], "data_offsets": [19, 19]}}     )";
  auto f = SafetensorsFile::FromBytes(MakeFile(header, 32), "edge");
  ASSERT_EQ(f->tensors().size(), 4u);
  EXPECT_EQ(f->tensors()[0].name, "scalar");
  EXPECT_EQ(f->tensors()[1].name, "empty");
  EXPECT_EQ(f->tensors()[2].name, "after_gap");
  EXPECT_EQ(f->tensors()[3].name, "empty_end");
  EXPECT_EQ(f->Get("scalar").numel(), 1);
  EXPECT_EQ(f->Get("empty").numel(), 0);
  EXPECT_EQ(f->Get("empty").nbytes, 0u);
  EXPECT_TRUE(f->metadata().empty());
  const uint8_t* gap = f->Data(f->Get("after_gap"));
  EXPECT_EQ(gap[0], static_cast<uint8_t>(16 * 7 + 1));
  // Empty tensor at the very end of an empty data section.
  f = SafetensorsFile::FromBytes(
      MakeFile(R"({"e": {"dtype": "F16", "shape": [3, 0], "data_offsets": [0, 0]}})", 0));
  EXPECT_EQ(f->Get("e").shape, (std::vector<int64_t>{3, 0}));
}

TEST(SafetensorsRead, DataRejectsForeignInfo) {
  auto f = SafetensorsFile::FromBytes(
      MakeFile(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})", 4));
  TensorInfo copy = f->Get("a");
  EXPECT_EQ(f->Data(copy), f->Data(f->Get("a")));
  copy.offset = 2;
  EXPECT_STIP_ERROR(f->Data(copy), ErrorCode::kInvalidArgument, {"outside the data section"});
}

// Random mutations of valid images: every outcome is a parse or a stip::Error,
// and every parsed tensor lies inside the data section.
TEST(SafetensorsCorrupt, RandomMutations) {
  TempDir dir;
  const std::vector<uint8_t> data(64, 0x5a);
  WriteSafetensors(dir.File("small.safetensors"),
                   {{"a", DType::kF32, {2, 3}, data.data()},
                    {"b", DType::kBF16, {4}, data.data()},
                    {"c", DType::kI64, {0}, data.data()},
                    {"d", DType::kU8, {5}, data.data()}},
                   {{"k", "v"}});
  std::vector<std::string> seeds = {ReadFile(dir.File("small.safetensors")),
                                    ReadFile(kLlamaModel).substr(0, 8 + 2144 + 605952)};
  std::mt19937 rng(12345);
  int parsed = 0, rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string img = seeds[iter % 2 == 0 ? 0 : 1];
    const uint64_t header_len = LE64(img);
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      // Mostly in the header; sometimes the length prefix.
      size_t pos = rng() % 10 == 0 ? rng() % 8 : 8 + rng() % header_len;
      switch (rng() % 3) {
        case 0:
          img[pos] = static_cast<char>(rng());
          break;
        case 1:
          img[pos] = "0123456789[]{},:\"-. "[rng() % 20];
          break;
        default:
          img[pos] ^= static_cast<char>(1 << (rng() % 8));
      }
    }
    try {
      auto f = SafetensorsFile::FromBytes(img, "mutant");
      const uint64_t data_size = img.size() - 8 - LE64(img);
      for (const TensorInfo& t : f->tensors()) {
        ASSERT_LE(t.offset + t.nbytes, data_size);
        ASSERT_EQ(t.nbytes, static_cast<uint64_t>(t.numel()) * DTypeSize(t.dtype));
        volatile uint8_t sink = 0;
        const uint8_t* p = f->Data(t);
        for (uint64_t i = 0; i < t.nbytes; i += 97) sink = sink + p[i];
      }
      ++parsed;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(parsed, 0);
  RecordProperty("parsed", parsed);
}

// ---------------------------------------------------------------------------
// Writing

struct Sample {
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-8f, -1e8f};
  std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff, 0x0001};
  std::vector<uint16_t> bf16 = {0x3f80, 0xbf80, 0x4049};
  std::vector<int64_t> i64 = {0, -1, INT64_MAX, INT64_MIN, 42};
  std::vector<uint8_t> flags = {1, 0, 1};
};

TEST(SafetensorsWrite, RoundTrip) {
  TempDir dir;
  const std::string path = dir.File("rt.safetensors");
  Sample s;
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "é \"quoted\""}};
  {
    SafetensorsWriter w(path, meta, 0600);
    w.Declare("w.f32", DType::kF32, {2, 3});
    w.Declare("w.f16", DType::kF16, {4});
    w.Declare("empty", DType::kF32, {0, 7});
    w.Declare("w.bf16", DType::kBF16, {3});
    w.Declare("ids", DType::kI64, {5});
    w.Declare("flags", DType::kBool, {3});
    // Chunked writes of uneven sizes.
    const char* p = reinterpret_cast<const char*>(s.f32.data());
    w.Write("w.f32", p, 5);
    w.Write("w.f32", p + 5, 0);
    w.Write("w.f32", p + 5, 11);
    w.Write("w.f32", p + 16, 8);
    w.Write("w.f16", s.f16.data(), 8);
    w.Write("empty", nullptr, 0);  // allowed, a no-op
    w.Write("w.bf16", s.bf16.data(), 6);
    w.Write("ids", s.i64.data(), 40);
    w.Write("flags", s.flags.data(), 3);
    // No file under the final name until Commit.
    EXPECT_FALSE(fs::exists(path));
    w.Commit();
    EXPECT_EQ(w.bytes_written(), fs::file_size(path));
  }
  // Only the final file is left.
  EXPECT_EQ(dir.List(), std::vector<std::string>{"rt.safetensors"});

  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  auto f = SafetensorsFile::Open(path);
  EXPECT_EQ(f->metadata(), meta);
  ASSERT_EQ(f->tensors().size(), 6u);
  // Offsets are contiguous in declaration order; the empty tensor sits at 32.
  const std::vector<std::string> order = {"w.f32", "w.f16", "empty", "w.bf16", "ids", "flags"};
  for (size_t i = 0; i < order.size(); ++i) EXPECT_EQ(f->tensors()[i].name, order[i]);
  EXPECT_EQ(f->Get("w.f32").offset, 0u);
  EXPECT_EQ(f->Get("w.f16").offset, 24u);
  EXPECT_EQ(f->Get("empty").offset, 32u);
  EXPECT_EQ(f->Get("w.bf16").offset, 32u);
  EXPECT_EQ(f->Get("ids").offset, 38u);
  EXPECT_EQ(f->Get("flags").offset, 78u);

  auto raw = [](const auto& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(v[0]));
  };
  EXPECT_EQ(Bytes(*f, f->Get("w.f32")), raw(s.f32));
  EXPECT_EQ(Bytes(*f, f->Get("w.f16")), raw(s.f16));
  EXPECT_EQ(Bytes(*f, f->Get("w.bf16")), raw(s.bf16));
  EXPECT_EQ(Bytes(*f, f->Get("ids")), raw(s.i64));
  EXPECT_EQ(Bytes(*f, f->Get("flags")), raw(s.flags));
  EXPECT_EQ(f->Get("w.bf16").dtype, DType::kBF16);
  EXPECT_EQ(f->Get("ids").dtype, DType::kI64);
  EXPECT_EQ(f->Get("empty").shape, (std::vector<int64_t>{0, 7}));
  EXPECT_EQ(f->Get("flags").dtype, DType::kBool);

  // The header: 8-byte aligned, space padded, keys in declaration order.
  const std::string img = ReadFile(path);
  const uint64_t n = LE64(img);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(img.size(), 8 + n + 81);
  const std::string header = img.substr(8, n);
  const size_t close = header.rfind('}');
  EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos);
  EXPECT_LT(header.size() - (close + 1), 8u);
  size_t prev = header.find("\"__metadata__\"");
  EXPECT_EQ(prev, 1u);
  for (const char* name : {"\"w.f32\"", "\"w.f16\"", "\"empty\"", "\"w.bf16\"", "\"ids\""}) {
    size_t pos = header.find(name);
    EXPECT_GT(pos, prev) << name;
    prev = pos;
  }
  // An independent JSON parse of the header agrees.
  auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["w.f16"]["data_offsets"], nlohmann::json({24, 32}));
  EXPECT_EQ(j["ids"]["dtype"], "I64");
}

TEST(SafetensorsWrite, ModeDefeatsUmask) {
  TempDir dir;
  const mode_t old = ::umask(077);
  const float x = 1.0f;
  WriteSafetensors(dir.File("a.safetensors"), {{"x", DType::kF32, {1}, &x}}, {}, 0644);
  WriteSafetensors(dir.File("b.safetensors"), {{"x", DType::kF32, {1}, &x}}, {}, 0600);
  ::umask(0);
  WriteSafetensors(dir.File("c.safetensors"), {{"x", DType::kF32, {1}, &x}}, {}, 0600);
  ::umask(old);
  struct stat st;
  ASSERT_EQ(::stat(dir.File("a.safetensors").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
  ASSERT_EQ(::stat(dir.File("b.safetensors").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(::stat(dir.File("c.safetensors").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST(SafetensorsWrite, ReplacesExistingAndEmptyFile) {
  TempDir dir;
  const std::string path = dir.File("m.safetensors");
  WriteFile(path, "old contents");
  { SafetensorsWriter(path, {{"only", "metadata"}}).Commit(); }
  auto f = SafetensorsFile::Open(path);
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_EQ(f->metadata().at("only"), "metadata");
  EXPECT_EQ(LE64(ReadFile(path)) % 8, 0u);
  // Without metadata, no "__metadata__" key at all.
  { SafetensorsWriter(path).Commit(); }
  EXPECT_EQ(ReadFile(path).find("__metadata__"), std::string::npos);
  EXPECT_EQ(dir.List(), std::vector<std::string>{"m.safetensors"});
}

TEST(SafetensorsWrite, LargeChunkedTensor) {
  // Larger than the writer's buffer, written in odd-sized chunks.
  TempDir dir;
  std::vector<uint16_t> big(3 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint16_t>(i * 2654435761u >> 7);
  const std::vector<int32_t> small = {1, 2, 3};
  {
    SafetensorsWriter w(dir.File("big.safetensors"));
    w.Declare("small", DType::kI32, {3});
    w.Declare("big", DType::kF16, {3, 1 << 20});
    w.Write("small", small.data(), 12);
    const char* p = reinterpret_cast<const char*>(big.data());
    size_t left = big.size() * 2, chunk = 1;
    while (left > 0) {
      size_t n = std::min(left, chunk);
      w.Write("big", p, n);
      p += n;
      left -= n;
      chunk = chunk * 3 + 1;
    }
    w.Commit();
  }
  auto f = SafetensorsFile::Open(dir.File("big.safetensors"));
  EXPECT_EQ(std::memcmp(f->Data(f->Get("big")), big.data(), big.size() * 2), 0);
  EXPECT_EQ(std::memcmp(f->Data(f->Get("small")), small.data(), 12), 0);
}

TEST(SafetensorsWrite, Misuse) {
  TempDir dir;
  const std::string path = dir.File("w.safetensors");
  const std::vector<float> data(16, 1.0f);
  {
    SafetensorsWriter w(path);
    w.Declare("a", DType::kF32, {2});
    w.Declare("b", DType::kF32, {3});
    EXPECT_STIP_ERROR(w.Declare("a", DType::kF16, {1}), ErrorCode::kInvalidArgument,
                      {path, "tensor \"a\": declared twice"});
    EXPECT_STIP_ERROR(w.Declare("__metadata__", DType::kU8, {1}), ErrorCode::kInvalidArgument,
                      {"reserved name"});
    EXPECT_STIP_ERROR(w.Declare("", DType::kU8, {1}), ErrorCode::kInvalidArgument,
                      {"empty tensor name"});
    EXPECT_STIP_ERROR(w.Declare("neg", DType::kU8, {-2}), ErrorCode::kInvalidArgument,
                      {"tensor \"neg\"", "negative dimension -2"});
    EXPECT_STIP_ERROR(w.Declare("huge", DType::kF64, {int64_t{1} << 62}),
                      ErrorCode::kInvalidArgument, {"tensor \"huge\"", "2^64-1 bytes"});
    // Out of order, undeclared, too many bytes.
    EXPECT_STIP_ERROR(w.Write("b", data.data(), 4), ErrorCode::kInvalidArgument,
                      {"tensor \"b\" written out of order", "next tensor to write is \"a\""});
    EXPECT_STIP_ERROR(w.Write("zzz", data.data(), 4), ErrorCode::kInvalidArgument,
                      {"undeclared tensor \"zzz\""});
    EXPECT_STIP_ERROR(w.Write("a", data.data(), 9), ErrorCode::kInvalidArgument,
                      {"tensor \"a\": writing 9 bytes after 0 exceeds its 8 bytes (F32 [2])"});
    w.Write("a", data.data(), 6);
    // After the first Write, no more declarations.
    EXPECT_STIP_ERROR(w.Declare("c", DType::kF32, {1}), ErrorCode::kFailedPrecondition,
                      {"tensor \"c\" declared after the first Write()"});
    EXPECT_STIP_ERROR(w.Write("a", data.data(), 3), ErrorCode::kInvalidArgument,
                      {"writing 3 bytes after 6 exceeds its 8 bytes"});
    EXPECT_STIP_ERROR(w.Write("b", data.data(), 4), ErrorCode::kInvalidArgument,
                      {"out of order", "next tensor to write is \"a\""});
    // Incomplete: Commit fails and no file appears.
    EXPECT_STIP_ERROR(w.Commit(), ErrorCode::kFailedPrecondition,
                      {"Commit() with tensor \"a\" incomplete: 6 of 8 bytes written"});
    EXPECT_FALSE(fs::exists(path));
    w.Write("a", data.data(), 2);
    w.Write("b", data.data(), 4);
    EXPECT_STIP_ERROR(w.Commit(), ErrorCode::kFailedPrecondition,
                      {"tensor \"b\" incomplete: 4 of 12 bytes written"});
    EXPECT_STIP_ERROR(w.Write("a", data.data(), 1), ErrorCode::kInvalidArgument,
                      {"tensor \"a\" written out of order", "next tensor to write is \"b\""});
    EXPECT_FALSE(fs::exists(path));
    EXPECT_EQ(dir.List().size(), 1u);  // the temporary file
    // Abandoned: the destructor removes the temporary file.
  }
  EXPECT_TRUE(dir.List().empty());
  EXPECT_FALSE(fs::exists(path));

  {
    SafetensorsWriter w(path);
    w.Declare("a", DType::kU8, {1});
    w.Write("a", data.data(), 1);
    EXPECT_STIP_ERROR(w.Write("a", data.data(), 1), ErrorCode::kInvalidArgument,
                      {"after all tensors are complete"});
    w.Commit();
    EXPECT_STIP_ERROR(w.Commit(), ErrorCode::kFailedPrecondition, {"after Commit()"});
    EXPECT_STIP_ERROR(w.Write("a", data.data(), 0), ErrorCode::kFailedPrecondition,
                      {"after Commit()"});
    EXPECT_STIP_ERROR(w.Declare("b", DType::kU8, {1}), ErrorCode::kFailedPrecondition,
                      {"after Commit()"});
  }
  EXPECT_EQ(dir.List(), std::vector<std::string>{"w.safetensors"});

  // A directory that does not exist.
  EXPECT_STIP_ERROR(SafetensorsWriter(dir.File("no/such/dir/x.safetensors")), ErrorCode::kNotFound,
                    {"no/such/dir/x.safetensors.tmp-", "cannot create"});
}

// ---------------------------------------------------------------------------
// Checkpoints

// Splits the llama fixture into `shards` files in `dir`, tensor i going to
// shard i % shards, and writes an index. Returns the weight map.
nlohmann::ordered_json ShardFixture(const TempDir& dir, int shards) {
  auto src = SafetensorsFile::Open(kLlamaModel);
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (int s = 0; s < shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s + 1, shards);
    SafetensorsWriter w(dir.File(name), {{"format", "pt"}});
    std::vector<const TensorInfo*> mine;
    for (size_t i = 0; i < src->tensors().size(); ++i) {
      if (static_cast<int>(i % shards) == s) mine.push_back(&src->tensors()[i]);
    }
    for (const TensorInfo* t : mine) w.Declare(t->name, t->dtype, t->shape);
    for (const TensorInfo* t : mine) {
      // Two chunks per tensor.
      const size_t half = t->nbytes / 2;
      w.Write(t->name, src->Data(*t), half);
      w.Write(t->name, src->Data(*t) + half, t->nbytes - half);
      weight_map[t->name] = name;
    }
    w.Commit();
  }
  return weight_map;
}

void WriteIndex(const TempDir& dir, const nlohmann::ordered_json& weight_map) {
  nlohmann::ordered_json index = {{"metadata", {{"total_size", 605952}}},
                                  {"weight_map", weight_map}};
  WriteFile(dir.File("model.safetensors.index.json"), index.dump(2));
}

TEST(Checkpoint, SingleFile) {
  Checkpoint c = Checkpoint::Open(kLlamaDir);
  EXPECT_FALSE(c.sharded());
  EXPECT_EQ(c.dir(), kLlamaDir);
  ASSERT_EQ(c.shards().size(), 1u);
  const std::vector<std::string> names = c.Names();
  ASSERT_EQ(names.size(), 21u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(names.front(), "lm_head.weight");
  EXPECT_TRUE(c.Has("model.norm.weight"));
  EXPECT_FALSE(c.Has("model.norm"));
  TensorRef r = c.Get("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(r.info->shape, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(r.file, c.shards()[0].get());
  EXPECT_EQ(LE32(r.data), 0xb8aebb66u);
  EXPECT_STIP_ERROR(c.Get("model.layers.0.self_attn.qkv.weight"), ErrorCode::kNotFound,
                    {"\"model.layers.0.self_attn.qkv.weight\"", kLlamaDir});
}

TEST(Checkpoint, ShardedMatchesUnsharded) {
  TempDir dir;
  WriteIndex(dir, ShardFixture(dir, 3));
  // A stray shard that the index does not reference is ignored, even corrupt.
  WriteFile(dir.File("model-00009-of-00009.safetensors"), "garbage");

  Checkpoint c = Checkpoint::Open(dir.path());
  EXPECT_TRUE(c.sharded());
  ASSERT_EQ(c.shards().size(), 3u);
  EXPECT_EQ(c.shards()[0]->path(), dir.File("model-00001-of-00003.safetensors"));
  EXPECT_EQ(c.shards()[2]->path(), dir.File("model-00003-of-00003.safetensors"));
  EXPECT_EQ(c.shards()[1]->tensors().size(), 7u);

  auto ref = SafetensorsFile::Open(kLlamaModel);
  Checkpoint single = Checkpoint::Open(kLlamaDir);
  EXPECT_EQ(c.Names(), single.Names());
  for (const std::string& name : c.Names()) {
    SCOPED_TRACE(name);
    TensorRef r = c.Get(name);
    const TensorInfo& want = ref->Get(name);
    EXPECT_EQ(r.info->name, name);
    EXPECT_EQ(r.info->dtype, want.dtype);
    EXPECT_EQ(r.info->shape, want.shape);
    ASSERT_EQ(r.info->nbytes, want.nbytes);
    EXPECT_EQ(std::memcmp(r.data, ref->Data(want), want.nbytes), 0);
    EXPECT_EQ(r.file->Find(name), r.info);
  }
  EXPECT_STIP_ERROR(c.Get("nope"), ErrorCode::kNotFound, {"\"nope\"", dir.path()});
}

TEST(Checkpoint, PrefersSingleFile) {
  TempDir dir;
  WriteIndex(dir, ShardFixture(dir, 2));
  fs::copy_file(kLlamaModel, dir.File("model.safetensors"));
  Checkpoint c = Checkpoint::Open(dir.path());
  EXPECT_FALSE(c.sharded());
  EXPECT_EQ(c.Names().size(), 21u);
}

TEST(Checkpoint, Errors) {
  TempDir dir;
  const std::string index = dir.File("model.safetensors.index.json");
  EXPECT_STIP_ERROR(Checkpoint::Open(dir.path()), ErrorCode::kNotFound,
                    {dir.path(), "model.safetensors", "model.safetensors.index.json"});
  nlohmann::ordered_json wm = ShardFixture(dir, 3);
  const std::string shard1 = "model-00001-of-00003.safetensors";
  const std::string shard2 = "model-00002-of-00003.safetensors";
  const std::string q = "model.layers.0.self_attn.q_proj.weight";

  // A missing shard file.
  auto bad = wm;
  bad["lm_head.weight"] = "model-00004-of-00003.safetensors";
  WriteIndex(dir, bad);
  EXPECT_STIP_ERROR(Checkpoint::Open(dir.path()), ErrorCode::kNotFound,
                    {index, "shard \"model-00004-of-00003.safetensors\""});

  // A tensor that its shard does not hold.
  ASSERT_EQ(wm[q], shard1);
  bad = wm;
  bad[q] = shard2;
  WriteIndex(dir, bad);
  EXPECT_STIP_ERROR(
      Checkpoint::Open(dir.path()), ErrorCode::kDataLoss,
      {index, "tensor \"" + q + "\" is mapped to shard \"" + shard2 + "\", which does not"});
  bad = wm;
  bad["model.extra"] = shard2;
  WriteIndex(dir, bad);
  EXPECT_STIP_ERROR(Checkpoint::Open(dir.path()), ErrorCode::kDataLoss,
                    {"tensor \"model.extra\" is mapped to shard \"" + shard2 + "\""});

  // Shard names that leave the directory.
  for (const std::string name : {"../x", "/etc/passwd", "a/b.safetensors", "..", "."}) {
    bad = wm;
    bad["lm_head.weight"] = name;
    WriteIndex(dir, bad);
    EXPECT_STIP_ERROR(Checkpoint::Open(dir.path()), ErrorCode::kInvalidArgument,
                      {index, "tensor \"lm_head.weight\" maps to shard"});
  }

  // Malformed indexes.
  auto expect_bad_index = [&](const std::string& text, const std::string& needle) {
    SCOPED_TRACE(text);
    WriteFile(index, text);
    ExpectError([&] { Checkpoint::Open(dir.path()); }, ErrorCode::kDataLoss, {index, needle});
  };
  expect_bad_index("{not json", "not valid JSON");
  expect_bad_index("[]", "expected an object");
  expect_bad_index(R"({"metadata": {}})", "missing \"weight_map\"");
  expect_bad_index(R"({"weight_map": []})", "\"weight_map\" is a JSON array");
  expect_bad_index(R"({"weight_map": {}})", "\"weight_map\" is empty");
  expect_bad_index(R"({"weight_map": {"lm_head.weight": 1}})",
                   "entry for tensor \"lm_head.weight\" is a JSON number");
  expect_bad_index(R"({"metadata": 3, "weight_map": {"a": "b"}})", "\"metadata\" is a JSON number");
  expect_bad_index(R"({"weight_map": {"lm_head.weight": ")" + shard1 + R"(", "lm_head.weight": ")" +
                       shard2 + R"("}})",
                   "duplicate key \"lm_head.weight\"");

  // A corrupt shard is reported with the index and shard names.
  WriteIndex(dir, wm);
  WriteFile(dir.File(shard2), "short");
  EXPECT_STIP_ERROR(Checkpoint::Open(dir.path()), ErrorCode::kDataLoss,
                    {index, "shard \"" + shard2 + "\"", "shorter than the 8-byte header"});
}

TEST(Checkpoint, TensorInTwoShards) {
  TempDir dir;
  const std::vector<float> v(4, 2.0f);
  WriteSafetensors(dir.File("a.safetensors"),
                   {{"t1", DType::kF32, {4}, v.data()}, {"t2", DType::kF32, {4}, v.data()}});
  WriteSafetensors(dir.File("b.safetensors"), {{"t2", DType::kF32, {4}, v.data()}});
  WriteIndex(dir, {{"t1", "a.safetensors"}, {"t2", "b.safetensors"}});
  EXPECT_STIP_ERROR(Checkpoint::Open(dir.path()), ErrorCode::kDataLoss,
                    {"tensor \"t2\" is present in both shard", "a.safetensors", "b.safetensors"});
  // Without the duplicate it opens.
  WriteSafetensors(dir.File("a.safetensors"), {{"t1", DType::kF32, {4}, v.data()}});
  Checkpoint c = Checkpoint::Open(dir.path());
  EXPECT_EQ(c.Names(), (std::vector<std::string>{"t1", "t2"}));
  EXPECT_EQ(c.Get("t2").file->path(), dir.File("b.safetensors"));
}

}  // namespace
}  // namespace stip
