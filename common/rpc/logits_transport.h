// How a session's logits o' travel from the stip server to the client.
//
//   fp32      every value as computed: exact (the default)
//   fp16      half the bytes; exact where the server computes in FP16
//   top-k:K   the K largest entries of each row and their indices: ~8 K bytes
//             per token instead of 4 x vocab; exact for greedy decoding and
//             for top-k sampling with top_k < K (CheckSamplingExact), as long
//             as no tie reaches the K-th entry (CheckTopKRowExact)
//
// The server encodes on the device it computed on, so only the kept bytes
// cross to the host; the client decodes into a dense [rows, vocab] FP32
// tensor with -inf where an entry was not sent, and samples from it as from
// full logits. The server learns nothing new from any format: it computed o'
// itself. Details and measurements: docs/logits-transport.md.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "stip/v1/stip.pb.h"

namespace stip {

struct SamplingOptions;

struct LogitsFormat {
  enum class Kind { kFp32, kFp16, kTopK };
  Kind kind = Kind::kFp32;
  int64_t top_k = 0;  // kTopK: entries per row (>= 1)

  // "fp32" | "fp16" | "top-k:K". Throws kInvalidArgument naming the problem.
  static LogitsFormat Parse(const std::string& text);
  std::string ToString() const;
  bool operator==(const LogitsFormat& o) const { return kind == o.kind && top_k == o.top_k; }
  bool operator!=(const LogitsFormat& o) const { return !(*this == o); }
};

// A session's format from its open message, checked against the model's
// vocabulary (kInvalidArgument naming the problem).
LogitsFormat LogitsFormatFromProto(const v1::LogitsFormat& proto, int64_t vocab_size);
void LogitsFormatToProto(const LogitsFormat& format, v1::LogitsFormat* out);

// Bytes a result of `rows` rows takes at most in this format (FP16 may fall
// back to FP32 for a step whose logits leave FP16's range).
int64_t LogitsWireBytes(const LogitsFormat& format, int64_t rows, int64_t vocab_size);

// o' rows in a format, on the host.
struct EncodedLogits {
  at::Tensor values;   // [R, vocab] FP32 or FP16; top-k: [R, K] FP32, largest first
  at::Tensor indices;  // top-k: [R, K] INT32 indices into o'; otherwise undefined
};

// Server: fp32 logits [R, vocab] on any device -> the format, on the host.
EncodedLogits EncodeLogits(const at::Tensor& logits, const LogitsFormat& format);
void ToWire(const EncodedLogits& logits, v1::StepResult* out);

// Client: a result's logits as dense FP32 [rows, vocab] on the CPU, -inf
// where the format did not send an entry. Throws kInvalidArgument describing
// a result that does not match the format (shape, datatype, indices out of
// range or repeated).
at::Tensor DecodeLogits(const v1::StepResult& result, const LogitsFormat& format, int64_t rows,
                        int64_t vocab_size);

// Throws kInvalidArgument, naming the option to change, where sampling with
// `sampling` from logits sent in `format` could pick differently than from
// the full logits (top-k formats: only greedy decoding and top-k sampling
// with top_k < K, without a repetition penalty, and K >= 2).
void CheckSamplingExact(const LogitsFormat& format, const SamplingOptions& sampling);

// For a top-k format, per token: `row` is the dense logits row (DecodeLogits,
// -inf where not sent). The sampler keeps every token whose logit reaches its
// threshold (the largest for greedy decoding, the top_k-th largest when
// sampling); that choice is the full logits' only if the smallest value sent
// is below the threshold -- otherwise a token that was not sent may tie with
// it. Throws kFailedPrecondition saying so (a larger K or fp32 avoids it).
void CheckTopKRowExact(const at::Tensor& row, const LogitsFormat& format,
                       const SamplingOptions& sampling);

}  // namespace stip
