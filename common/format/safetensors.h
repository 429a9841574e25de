// The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte
// little-endian header length, a JSON header {name: {dtype, shape,
// data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.
//
// SafetensorsFile memory-maps a file read-only and validates the header fully
// before anything is read: header length within the file, valid JSON object,
// known dtype, shape x dtype size == byte range, ranges inside the data
// section and not overlapping. Every failure is a stip::Error naming the file
// and the tensor. Torch-free, so that it can be fuzzed on its own.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/format/dtype.h"

namespace stip {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Memory-maps `path`. Throws kNotFound (missing file) or kDataLoss (corrupt).
  static std::shared_ptr<const SafetensorsFile> Open(const std::string& path);
  // Parses an in-memory copy (tests, fuzzing). `source` names it in errors.
  static std::shared_ptr<const SafetensorsFile> FromBytes(std::string bytes,
                                                          const std::string& source = "<memory>");
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // Tensors in the order of their data offsets.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
  // Throws kNotFound naming the tensor and the file.
  const TensorInfo& Get(std::string_view name) const;
  // Pointer to the tensor's bytes inside the mapping (valid while this object lives).
  const uint8_t* Data(const TensorInfo& info) const;
  // Tells the kernel this tensor's pages are no longer needed, so that a pass
  // over a large model (transform, fingerprint) keeps a small resident set.
  // The data stays readable (it is paged in again on access). No-op for
  // in-memory files.
  void Evict(const TensorInfo& info) const;

 private:
  SafetensorsFile() = default;
  void Parse();

  std::string path_;
  std::string owned_;              // FromBytes storage
  const uint8_t* base_ = nullptr;  // whole file
  uint64_t size_ = 0;
  void* map_ = nullptr;
  uint64_t map_size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// Streaming writer: declare every tensor first (the header holds all offsets),
// then write each tensor's bytes in declaration order, then Commit(). Writes
// to "<path>.tmp-XXXX" and renames over `path` on Commit, so that a crash
// never leaves a half-written file under the final name. File mode is `mode`
// (0600 for anything that may hold secrets).
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::string path, std::map<std::string, std::string> metadata = {},
                    unsigned mode = 0644);
  ~SafetensorsWriter();  // removes the temporary file unless committed
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  void Declare(const std::string& name, DType dtype, std::vector<int64_t> shape);
  // Writes `nbytes` of the next declared tensor; may be called several times
  // per tensor (chunks). Throws kInvalidArgument if more bytes than declared
  // are written or tensors are written out of order.
  void Write(const std::string& name, const void* data, size_t nbytes);
  // Checks every tensor was written completely, fsyncs and renames.
  void Commit();

  uint64_t bytes_written() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One-shot helper for small files.
struct TensorBytes {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;  // numel * DTypeSize(dtype) bytes
};
void WriteSafetensors(const std::string& path, const std::vector<TensorBytes>& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      unsigned mode = 0644);

}  // namespace stip
