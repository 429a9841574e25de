#include "common/rpc/file_transfer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <set>

#include "common/error.h"
#include "common/util/files.h"
#include "common/util/sha256.h"

namespace stip {

namespace {

// The transfer digest (file_transfer.h): SHA-256 over each file's name, a NUL
// byte, its size (8 bytes little-endian) and its bytes.
class Digest {
 public:
  void Update(const void* data, size_t n) { sha_.Update(data, n); }
  void FileHeader(const std::string& name, uint64_t size) {
    Update(name.data(), name.size());
    const char zero = 0;
    Update(&zero, 1);
    unsigned char le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(size >> (8 * i));
    Update(le, 8);
  }
  std::string Hex() { return sha_.HexDigest(); }

 private:
  Sha256 sha_;
};

}  // namespace

bool IsSafeFileName(const std::string& name) {
  if (name.empty() || name.size() > 255 || name == "." || name == "..") return false;
  for (char c : name) {
    if (c == '/' || c == '\\' || c == '\0') return false;
  }
  return name.find("..") == std::string::npos;
}

std::vector<OutgoingFile> ListFilesForTransfer(const std::string& dir) {
  std::vector<OutgoingFile> out;
  for (const std::string& name : ListDirectory(dir)) {
    std::string path = JoinPath(dir, name);
    struct stat st;
    if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    OutgoingFile f;
    f.name = name;
    f.path = path;
    f.size = static_cast<uint64_t>(st.st_size);
    f.mode = (st.st_mode & 077) == 0 ? 0600 : 0644;
    out.push_back(f);
  }
  return out;
}

void FillEntries(const std::vector<OutgoingFile>& files,
                 google::protobuf::RepeatedPtrField<v1::FileEntry>* out) {
  out->Clear();
  for (const auto& f : files) {
    v1::FileEntry* e = out->Add();
    e->set_name(f.name);
    e->set_size(f.size);
    e->set_mode(f.mode);
  }
}

std::string StreamFiles(const std::vector<OutgoingFile>& files, size_t chunk_bytes,
                        const std::function<bool(const v1::FileChunk&)>& send) {
  Digest digest;
  std::vector<char> buf(chunk_bytes);
  for (size_t i = 0; i < files.size(); ++i) {
    const OutgoingFile& f = files[i];
    digest.FileHeader(f.name, f.size);
    int fd = open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw NotFound(f.path + ": cannot open");
    uint64_t offset = 0;
    while (offset < f.size) {
      ssize_t n = read(fd, buf.data(), std::min<uint64_t>(chunk_bytes, f.size - offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        close(fd);
        throw DataLoss(f.path + ": file shrank while being sent");
      }
      digest.Update(buf.data(), static_cast<size_t>(n));
      v1::FileChunk chunk;
      chunk.set_file_index(static_cast<uint32_t>(i));
      chunk.set_offset(offset);
      chunk.set_data(buf.data(), static_cast<size_t>(n));
      if (!send(chunk)) {
        close(fd);
        throw Internal("stream broken while sending " + f.name);
      }
      offset += static_cast<uint64_t>(n);
    }
    close(fd);
  }
  return digest.Hex();
}

struct DirectoryReceiver::Impl {
  std::string final_dir, tmp;
  std::vector<TransferFile> files;
  bool honour_modes = false;
  size_t current = 0;       // file being received
  uint64_t received = 0;    // bytes of the current file
  uint64_t total = 0;
  int fd = -1;
  Digest digest;
  bool verified = false;
  bool committed = false;

  void OpenCurrent() {
    const TransferFile& f = files[current];
    unsigned mode = honour_modes && f.mode == 0600 ? 0600 : (honour_modes ? 0644 : 0600);
    fd = open(JoinPath(tmp, f.name).c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
              static_cast<mode_t>(mode));
    if (fd < 0) throw Internal(tmp + "/" + f.name + ": cannot create");
    fchmod(fd, static_cast<mode_t>(mode));
    digest.FileHeader(f.name, f.size);
    received = 0;
  }
  void CloseCurrent() {
    if (fd >= 0) {
      if (fsync(fd) != 0) {
        close(fd);
        fd = -1;
        throw Internal("fsync failed while receiving " + files[current].name);
      }
      close(fd);
      fd = -1;
    }
  }
  // Moves past completed files (including empty ones).
  void Advance() {
    while (current < files.size() && received == files[current].size) {
      CloseCurrent();
      ++current;
      if (current < files.size()) OpenCurrent();
    }
  }
};

std::vector<TransferFile> TransferFilesFromProto(
    const google::protobuf::RepeatedPtrField<v1::FileEntry>& files) {
  std::vector<TransferFile> out;
  out.reserve(static_cast<size_t>(files.size()));
  for (const v1::FileEntry& f : files) out.push_back({f.name(), f.size(), f.mode()});
  return out;
}

TransferChunk TransferChunkFromProto(const v1::FileChunk& chunk) {
  return {chunk.file_index(), chunk.offset(), chunk.data()};
}

DirectoryReceiver::DirectoryReceiver(std::string final_dir,
                                     const google::protobuf::RepeatedPtrField<v1::FileEntry>& files,
                                     const ReceiveLimits& limits, unsigned dir_mode,
                                     bool honour_file_modes)
    : DirectoryReceiver(std::move(final_dir), TransferFilesFromProto(files), limits, dir_mode,
                        honour_file_modes) {}

DirectoryReceiver::DirectoryReceiver(std::string final_dir, const std::vector<TransferFile>& files,
                                     const ReceiveLimits& limits, unsigned dir_mode,
                                     bool honour_file_modes)
    : impl_(std::make_unique<Impl>()) {
  impl_->final_dir = std::move(final_dir);
  impl_->honour_modes = honour_file_modes;
  if (files.empty()) throw InvalidArgument("transfer lists no files");
  if (static_cast<size_t>(files.size()) > limits.max_files) {
    throw InvalidArgument("transfer lists " + std::to_string(files.size()) + " files (limit " +
                          std::to_string(limits.max_files) + ")");
  }
  std::set<std::string> names;
  uint64_t total = 0;
  for (const auto& f : files) {
    if (!IsSafeFileName(f.name)) {
      throw InvalidArgument("file name " + QuoteForMessage(f.name) +
                            " is not a plain file name (no '/', no \"..\")");
    }
    if (!names.insert(f.name).second)
      throw InvalidArgument("file " + QuoteForMessage(f.name) + " listed twice");
    if (f.size > limits.max_total_bytes || total + f.size > limits.max_total_bytes) {
      throw ResourceExhausted("transfer of more than " + std::to_string(limits.max_total_bytes) +
                              " bytes refused (size limit)");
    }
    total += f.size;
    impl_->files.push_back(f);
  }
  if (PathExists(impl_->final_dir)) {
    throw FailedPrecondition(impl_->final_dir + " already exists");
  }
  impl_->tmp = MakeTempDirectoryBeside(impl_->final_dir, dir_mode);
  impl_->OpenCurrent();
  impl_->Advance();
}

DirectoryReceiver::~DirectoryReceiver() {
  if (impl_->fd >= 0) close(impl_->fd);
  if (!impl_->committed) RemoveAll(impl_->tmp);
}

void DirectoryReceiver::Accept(const v1::FileChunk& chunk) {
  Accept(TransferChunkFromProto(chunk));
}

void DirectoryReceiver::Accept(const TransferChunk& chunk) {
  Impl& m = *impl_;
  if (m.current >= m.files.size()) throw InvalidArgument("data after the last file");
  if (chunk.file_index != m.current) {
    throw InvalidArgument("chunk for file " + std::to_string(chunk.file_index) + " while file " +
                          std::to_string(m.current) + " (" + m.files[m.current].name +
                          ") is incomplete");
  }
  if (chunk.offset != m.received) {
    throw InvalidArgument("chunk of " + m.files[m.current].name + " at offset " +
                          std::to_string(chunk.offset) + ", expected " +
                          std::to_string(m.received));
  }
  const std::string_view data = chunk.data;
  if (m.received + data.size() > m.files[m.current].size) {
    throw InvalidArgument("more bytes of " + m.files[m.current].name + " than its declared size " +
                          std::to_string(m.files[m.current].size));
  }
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(m.fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Internal("write failed while receiving " + m.files[m.current].name);
    done += static_cast<size_t>(n);
  }
  m.digest.Update(data.data(), data.size());
  m.received += data.size();
  m.total += data.size();
  m.Advance();
}

void DirectoryReceiver::VerifyDigest(const std::string& sha256_hex) {
  Impl& m = *impl_;
  if (m.verified) throw FailedPrecondition("transfer digest already verified");
  if (m.current < m.files.size()) {
    throw InvalidArgument("transfer incomplete: " + m.files[m.current].name + " has " +
                          std::to_string(m.received) + " of " +
                          std::to_string(m.files[m.current].size) + " bytes");
  }
  std::string got = m.digest.Hex();
  if (got != sha256_hex) {
    throw DataLoss("SHA-256 mismatch: the content received hashes to " + got +
                   ", the sender said " + QuoteForMessage(sha256_hex) + "; nothing was stored");
  }
  SyncDirectory(m.tmp);
  m.verified = true;
}

void DirectoryReceiver::Commit(const std::string& sha256_hex) {
  if (!impl_->verified) VerifyDigest(sha256_hex);
  Commit();
}

void DirectoryReceiver::Commit() {
  Impl& m = *impl_;
  if (!m.verified) throw FailedPrecondition("transfer committed before its digest was verified");
  if (m.committed) throw FailedPrecondition(m.final_dir + ": transfer already committed");
  if (PathExists(m.final_dir)) throw FailedPrecondition(m.final_dir + " already exists");
  RenamePath(m.tmp, m.final_dir);
  m.committed = true;
  std::string parent = m.final_dir.substr(0, m.final_dir.find_last_of('/'));
  if (!parent.empty()) SyncDirectory(parent);
}

uint64_t DirectoryReceiver::bytes_received() const { return impl_->total; }
const std::string& DirectoryReceiver::temp_dir() const { return impl_->tmp; }

}  // namespace stip
