// Streaming a directory of files over gRPC (model uploads to the server,
// client bundles from the developer): a header listing the files, chunks in
// order, and a trailer with a SHA-256 over the content, checked before the
// received directory becomes visible under its final name.
//
// Digest: SHA-256 over, for each file in header order, its name, a NUL byte,
// its size as 8 little-endian bytes, and its bytes.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "stip/v1/stip.pb.h"

namespace stip {

struct OutgoingFile {
  std::string name;  // name in the transfer (no directories)
  std::string path;  // where it is read from
  uint64_t size = 0;
  uint32_t mode = 0644;
};

// The regular files of `dir` (not recursing), sorted by name; modes: 0600 for
// files that are private on disk (no group/other read bits), 0644 otherwise.
std::vector<OutgoingFile> ListFilesForTransfer(const std::string& dir);
void FillEntries(const std::vector<OutgoingFile>& files,
                 google::protobuf::RepeatedPtrField<v1::FileEntry>* out);

// Sends every file as chunks of at most `chunk_bytes`; `send` returns false if
// the stream broke (then StreamFiles throws kInternal). Returns the digest.
std::string StreamFiles(const std::vector<OutgoingFile>& files, size_t chunk_bytes,
                        const std::function<bool(const v1::FileChunk&)>& send);

// A file and a chunk of a transfer, independent of the wire (the model store
// receives uploads in these; TransferFilesFromProto / TransferChunkFromProto
// convert the messages).
struct TransferFile {
  std::string name;  // plain file name (IsSafeFileName)
  uint64_t size = 0;
  uint32_t mode = 0;  // 0600 for private files where modes are honoured
};
struct TransferChunk {
  uint32_t file_index = 0;  // into the file list
  uint64_t offset = 0;      // bytes of that file received before this chunk
  std::string_view data;    // valid while Accept runs
};
std::vector<TransferFile> TransferFilesFromProto(
    const google::protobuf::RepeatedPtrField<v1::FileEntry>& files);
TransferChunk TransferChunkFromProto(const v1::FileChunk& chunk);  // views chunk's bytes

struct ReceiveLimits {
  uint64_t max_total_bytes = uint64_t{1} << 40;
  size_t max_files = 4096;
};

// Receives into "<final_dir>.tmp-XXXXXX"; Commit() checks completeness and
// the digest, fsyncs, and renames to `final_dir` (which must not exist). The
// destructor removes the temporary directory of an unfinished transfer.
class DirectoryReceiver {
 public:
  // Throws kInvalidArgument for a bad file list (names with '/', "..", empty
  // or duplicate names, sizes beyond the limits) or kFailedPrecondition if
  // `final_dir` exists.
  DirectoryReceiver(std::string final_dir, const std::vector<TransferFile>& files,
                    const ReceiveLimits& limits, unsigned dir_mode = 0700,
                    bool honour_file_modes = false);
  DirectoryReceiver(std::string final_dir,
                    const google::protobuf::RepeatedPtrField<v1::FileEntry>& files,
                    const ReceiveLimits& limits, unsigned dir_mode = 0700,
                    bool honour_file_modes = false);
  ~DirectoryReceiver();
  DirectoryReceiver(const DirectoryReceiver&) = delete;
  DirectoryReceiver& operator=(const DirectoryReceiver&) = delete;

  // Chunks must come in order: file by file, offsets contiguous. Throws
  // kInvalidArgument otherwise (or for bytes beyond a file's declared size).
  void Accept(const TransferChunk& chunk);
  void Accept(const v1::FileChunk& chunk);
  // Checks completeness and the digest and fsyncs the received files, without
  // renaming: the content can then be validated in temp_dir() before Commit()
  // makes it visible. Throws kInvalidArgument (incomplete) or kDataLoss (digest
  // mismatch). May be called once.
  void VerifyDigest(const std::string& sha256_hex);
  // Renames the temporary directory to `final_dir` (which must not exist).
  // Calls VerifyDigest(sha256_hex) first unless it already succeeded (then the
  // argument is ignored). Throws kInvalidArgument (incomplete) or kDataLoss
  // (digest mismatch); the directory then never becomes visible.
  void Commit(const std::string& sha256_hex);
  // Same, after a successful VerifyDigest() (else kFailedPrecondition).
  void Commit();
  uint64_t bytes_received() const;
  const std::string& temp_dir() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// True iff `name` is a plain file name that cannot escape a directory.
bool IsSafeFileName(const std::string& name);

}  // namespace stip
