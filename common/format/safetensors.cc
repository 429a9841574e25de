#include "common/format/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <utility>

#include "common/error.h"

namespace stip {
namespace {

using json = nlohmann::json;

// The reference implementation refuses headers over 100 MB; a header that
// large is never legitimate, and capping it bounds the JSON parser's memory.
constexpr uint64_t kMaxHeaderSize = 100ull << 20;  // 100 MiB
constexpr const char* kMetadataKey = "__metadata__";

std::string ErrnoText(int err) { return std::string(std::strerror(err)); }

Error ErrnoError(int err, const std::string& what) {
  std::string msg = what + ": " + ErrnoText(err);
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return NotFound(msg);
    case EACCES:
    case EPERM:
    case EROFS:
      return Error(ErrorCode::kPermissionDenied, msg);
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
    case EFBIG:
      return ResourceExhausted(msg);
    default:
      return Internal(msg);
  }
}

// Parses JSON text, rejecting duplicate keys in any object (nlohmann::json
// would silently keep the last one, so that two readers could disagree on
// what a file holds). Throws kDataLoss naming `source`.
json ParseJsonStrict(const char* begin, const char* end, const std::string& source) {
  std::vector<std::set<std::string>> keys;  // one per open object
  std::string duplicate;
  auto callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string()) {
          const std::string& k = parsed.get_ref<const std::string&>();
          if (!keys.back().insert(k).second && duplicate.empty()) duplicate = k;
        }
        break;
      default:
        break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const json::exception& e) {
    throw DataLoss(source + ": header is not valid JSON: " + e.what());
  }
  if (!duplicate.empty()) {
    throw DataLoss(source + ": header has duplicate key " + QuoteForMessage(duplicate));
  }
  return j;
}

uint64_t ReadLE64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void WriteLE64(uint64_t v, uint8_t* p) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Byte size of a tensor; throws kInvalidArgument (naming `what`) on a negative
// dim or on overflow of int64 elements / uint64 bytes.
uint64_t TensorBytesOf(DType dtype, const std::vector<int64_t>& shape, const std::string& what) {
  int64_t numel = NumElements(shape, what);
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(numel), static_cast<uint64_t>(DTypeSize(dtype)),
                             &nbytes)) {
    throw InvalidArgument(what + ": " + DTypeName(dtype) + " " + ShapeString(shape) +
                          " needs more than 2^64-1 bytes");
  }
  return nbytes;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // validated when the header was parsed
  return n;
}

// ---------------------------------------------------------------------------
// SafetensorsFile

std::shared_ptr<const SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ErrnoError(errno, path + ": cannot open");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw ErrnoError(err, path + ": cannot stat");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InvalidArgument(path + ": not a regular file");
  }
  f->size_ = static_cast<uint64_t>(st.st_size);
  if (f->size_ < 8) {
    ::close(fd);
    throw DataLoss(path + ": file is " + std::to_string(f->size_) +
                   " bytes, shorter than the 8-byte header length");
  }
  void* map = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);
  if (map == MAP_FAILED) throw ErrnoError(err, path + ": cannot mmap");
  f->map_ = map;
  f->map_size_ = f->size_;
  f->base_ = static_cast<const uint8_t*>(map);
  f->Parse();  // on throw, the destructor unmaps
  return f;
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::FromBytes(std::string bytes,
                                                                  const std::string& source) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = source;
  f->owned_ = std::move(bytes);
  f->base_ = reinterpret_cast<const uint8_t*>(f->owned_.data());
  f->size_ = f->owned_.size();
  f->Parse();
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

void SafetensorsFile::Parse() {
  const std::string& src = path_;
  if (size_ < 8) {
    throw DataLoss(src + ": file is " + std::to_string(size_) +
                   " bytes, shorter than the 8-byte header length");
  }
  const uint64_t header_len = ReadLE64(base_);
  if (header_len > kMaxHeaderSize) {
    throw DataLoss(src + ": header length " + std::to_string(header_len) +
                   " exceeds the limit of " + std::to_string(kMaxHeaderSize) + " bytes");
  }
  if (header_len > size_ - 8) {
    throw DataLoss(src + ": header length " + std::to_string(header_len) +
                   " runs past the end of the " + std::to_string(size_) + "-byte file");
  }
  data_start_ = 8 + header_len;
  const uint64_t data_size = size_ - data_start_;

  const char* hbegin = reinterpret_cast<const char*>(base_ + 8);
  json header = ParseJsonStrict(hbegin, hbegin + header_len, src);
  if (!header.is_object()) {
    throw DataLoss(src + ": header is a JSON " + std::string(header.type_name()) +
                   ", expected an object");
  }

  std::vector<TensorInfo> tensors;
  tensors.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == kMetadataKey) {
      if (!v.is_object()) {
        throw DataLoss(src + ": \"__metadata__\" is a JSON " + std::string(v.type_name()) +
                       ", expected an object of strings");
      }
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          throw DataLoss(src + ": \"__metadata__\" value for key " + QuoteForMessage(m.key()) +
                         " is a JSON " + std::string(m.value().type_name()) +
                         ", expected a string");
        }
        metadata_.emplace(m.key(), m.value().get<std::string>());
      }
      continue;
    }

    const std::string what = src + ": tensor " + QuoteForMessage(name);
    if (!v.is_object()) {
      throw DataLoss(what + ": entry is a JSON " + std::string(v.type_name()) +
                     ", expected an object");
    }
    auto field = [&](const char* key) -> const json& {
      auto f = v.find(key);
      if (f == v.end()) throw DataLoss(what + ": missing \"" + key + "\"");
      return *f;
    };
    const json& jdtype = field("dtype");
    const json& jshape = field("shape");
    const json& joffsets = field("data_offsets");

    TensorInfo info;
    info.name = name;
    if (!jdtype.is_string()) {
      throw DataLoss(what + ": \"dtype\" is a JSON " + std::string(jdtype.type_name()) +
                     ", expected a string");
    }
    try {
      info.dtype = ParseDType(jdtype.get_ref<const std::string&>(), what);
    } catch (const Error& e) {
      throw DataLoss(e.what());
    }

    if (!jshape.is_array()) {
      throw DataLoss(what + ": \"shape\" is a JSON " + std::string(jshape.type_name()) +
                     ", expected an array of integers");
    }
    info.shape.reserve(jshape.size());
    for (const json& d : jshape) {
      if (d.is_number_unsigned()) {
        uint64_t u = d.get<uint64_t>();
        if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          throw DataLoss(what + ": dimension " + std::to_string(u) + " in \"shape\" is too large");
        }
        info.shape.push_back(static_cast<int64_t>(u));
      } else if (d.is_number_integer()) {
        info.shape.push_back(d.get<int64_t>());  // negative: rejected below
      } else {
        // (No dump() of the value: it may be nested deeply enough to overflow the stack.)
        throw DataLoss(what + ": \"shape\" holds a JSON " + std::string(d.type_name()) +
                       ", expected integers");
      }
    }

    uint64_t expected = 0;
    try {
      expected = TensorBytesOf(info.dtype, info.shape, what);
    } catch (const Error& e) {
      throw DataLoss(e.what());
    }

    if (!joffsets.is_array() || joffsets.size() != 2) {
      std::string got = joffsets.is_array()
                            ? "an array of " + std::to_string(joffsets.size()) + " elements"
                            : "a JSON " + std::string(joffsets.type_name());
      throw DataLoss(what + ": \"data_offsets\" must be an array [begin, end], got " + got);
    }
    uint64_t range[2];
    for (int i = 0; i < 2; ++i) {
      const json& o = joffsets[i];
      if (!o.is_number_unsigned()) {
        std::string got = o.is_number_integer() ? std::to_string(o.get<int64_t>())
                                                : "a JSON " + std::string(o.type_name());
        throw DataLoss(what + ": \"data_offsets\" must hold non-negative integers, got " + got);
      }
      range[i] = o.get<uint64_t>();
    }
    const uint64_t begin = range[0], end = range[1];
    const std::string range_str =
        "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + ")";
    if (begin > end) throw DataLoss(what + ": " + range_str + " has begin > end");
    if (end > data_size) {
      throw DataLoss(what + ": " + range_str + " runs past the end of the " +
                     std::to_string(data_size) + "-byte data section");
    }
    if (end - begin != expected) {
      throw DataLoss(what + ": " + range_str + " but " + DTypeName(info.dtype) + " " +
                     ShapeString(info.shape) + " needs " + std::to_string(expected) + " bytes");
    }
    info.offset = begin;
    info.nbytes = expected;
    tensors.push_back(std::move(info));
  }

  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.offset != b.offset) return a.offset < b.offset;
    if (a.nbytes != b.nbytes) return a.nbytes < b.nbytes;
    return a.name < b.name;
  });
  // Overlap check. Empty tensors own no bytes, so they cannot overlap anything.
  const TensorInfo* last = nullptr;  // the non-empty tensor reaching furthest so far
  for (const TensorInfo& t : tensors) {
    if (t.nbytes == 0) continue;
    if (last != nullptr && t.offset < last->offset + last->nbytes) {
      throw DataLoss(src + ": tensor " + QuoteForMessage(t.name) + " at data_offsets [" +
                     std::to_string(t.offset) + ", " + std::to_string(t.offset + t.nbytes) +
                     ") overlaps tensor " + QuoteForMessage(last->name) + " at [" +
                     std::to_string(last->offset) + ", " +
                     std::to_string(last->offset + last->nbytes) + ")");
    }
    last = &t;
  }

  tensors_ = std::move(tensors);
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::Get(std::string_view name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) throw NotFound(path_ + ": no tensor " + QuoteForMessage(name));
  return *info;
}

const uint8_t* SafetensorsFile::Data(const TensorInfo& info) const {
  // `info` may be a copy, or come from another file: never point outside the mapping.
  const uint64_t data_size = size_ - data_start_;
  if (info.offset > data_size || info.nbytes > data_size - info.offset) {
    throw InvalidArgument(path_ + ": tensor " + QuoteForMessage(info.name) + " at offset " +
                          std::to_string(info.offset) + " (" + std::to_string(info.nbytes) +
                          " bytes) lies outside the data section");
  }
  return base_ + data_start_ + info.offset;
}

// ---------------------------------------------------------------------------
// SafetensorsWriter

struct SafetensorsWriter::Impl {
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t offset = 0;
    uint64_t nbytes = 0;
    uint64_t written = 0;
  };

  std::string path;
  std::string tmp_path;
  std::map<std::string, std::string> metadata;
  unsigned mode = 0644;
  int fd = -1;
  std::vector<Pending> tensors;
  std::map<std::string, size_t, std::less<>> by_name;
  uint64_t data_size = 0;  // sum of declared sizes
  bool header_written = false;
  size_t cursor = 0;  // first tensor not completely written
  bool committed = false;
  bool failed = false;         // an I/O error happened; the file is unusable
  uint64_t bytes_written = 0;  // header + data handed to the writer
  std::string buffer;
  static constexpr size_t kBufferSize = 1 << 20;

  void CheckUsable(const char* op) const {
    if (committed) throw FailedPrecondition(path + ": " + op + " after Commit()");
    if (failed) throw FailedPrecondition(path + ": " + op + " after an earlier write error");
  }

  void WriteAll(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        failed = true;
        throw ErrnoError(errno, tmp_path + ": write failed");
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
  }

  void Flush() {
    if (buffer.empty()) return;
    WriteAll(buffer.data(), buffer.size());
    buffer.clear();
  }

  void Append(const void* data, size_t n) {
    if (n == 0) return;
    if (buffer.size() + n > kBufferSize) Flush();
    if (n >= kBufferSize) {
      WriteAll(data, n);
    } else {
      buffer.append(static_cast<const char*>(data), n);
    }
    bytes_written += n;
  }

  void WriteHeader() {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) {
      nlohmann::ordered_json m = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata) m[k] = v;
      header[kMetadataKey] = std::move(m);
    }
    for (const Pending& t : tensors) {
      nlohmann::ordered_json e = nlohmann::ordered_json::object();
      e["dtype"] = DTypeName(t.dtype);
      e["shape"] = t.shape;
      e["data_offsets"] = {t.offset, t.offset + t.nbytes};
      header[t.name] = std::move(e);
    }
    std::string text;
    try {
      text = header.dump();
    } catch (const nlohmann::json::exception& e) {
      // Invalid UTF-8 in a name or metadata string.
      throw InvalidArgument(path + ": cannot encode header: " + e.what());
    }
    // Pad with spaces so that the data section starts 8-byte aligned, as the
    // reference implementation does.
    text.append((8 - text.size() % 8) % 8, ' ');
    uint8_t len[8];
    WriteLE64(text.size(), len);
    header_written = true;
    Append(len, sizeof(len));
    Append(text.data(), text.size());
  }

  void SkipComplete() {
    while (cursor < tensors.size() && tensors[cursor].written == tensors[cursor].nbytes) ++cursor;
  }
};

SafetensorsWriter::SafetensorsWriter(std::string path, std::map<std::string, std::string> metadata,
                                     unsigned mode)
    : impl_(std::make_unique<Impl>()) {
  impl_->path = std::move(path);
  impl_->metadata = std::move(metadata);
  impl_->mode = mode & 07777;
  if (impl_->path.empty()) throw InvalidArgument("SafetensorsWriter: empty path");
  // The temporary file lives next to the target, so that rename() is atomic.
  // It is created 0600 whatever `mode` says, and gets `mode` just before the
  // rename (fchmod is not subject to the umask).
  std::random_device rd;
  std::mt19937_64 rng((static_cast<uint64_t>(rd()) << 32) ^ rd() ^
                      static_cast<uint64_t>(::getpid()));
  static const char kHex[] = "0123456789abcdef";
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string tmp = impl_->path + ".tmp-";
    uint64_t r = rng();
    for (int i = 0; i < 12; ++i) tmp += kHex[(r >> (4 * i)) & 15];
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      impl_->fd = fd;
      impl_->tmp_path = std::move(tmp);
      return;
    }
    if (errno != EEXIST) throw ErrnoError(errno, tmp + ": cannot create");
  }
  throw Internal(impl_->path + ": cannot create a unique temporary file");
}

SafetensorsWriter::~SafetensorsWriter() {
  if (impl_ == nullptr) return;
  if (impl_->fd >= 0) ::close(impl_->fd);
  if (!impl_->committed && !impl_->tmp_path.empty()) ::unlink(impl_->tmp_path.c_str());
}

void SafetensorsWriter::Declare(const std::string& name, DType dtype, std::vector<int64_t> shape) {
  Impl& s = *impl_;
  s.CheckUsable("Declare()");
  if (s.header_written) {
    throw FailedPrecondition(s.path + ": tensor " + QuoteForMessage(name) +
                             " declared after the first Write(); declare every tensor first");
  }
  const std::string what = s.path + ": tensor " + QuoteForMessage(name);
  if (name.empty()) throw InvalidArgument(s.path + ": empty tensor name");
  if (name == kMetadataKey) throw InvalidArgument(what + ": reserved name");
  if (s.by_name.count(name) != 0) throw InvalidArgument(what + ": declared twice");
  uint64_t nbytes = TensorBytesOf(dtype, shape, what);
  uint64_t end = 0;
  if (__builtin_add_overflow(s.data_size, nbytes, &end)) {
    throw InvalidArgument(what + ": data section would exceed 2^64-1 bytes");
  }
  Impl::Pending p;
  p.name = name;
  p.dtype = dtype;
  p.shape = std::move(shape);
  p.offset = s.data_size;
  p.nbytes = nbytes;
  s.data_size = end;
  s.by_name.emplace(name, s.tensors.size());
  s.tensors.push_back(std::move(p));
}

void SafetensorsWriter::Write(const std::string& name, const void* data, size_t nbytes) {
  Impl& s = *impl_;
  s.CheckUsable("Write()");
  auto it = s.by_name.find(name);
  if (it == s.by_name.end()) {
    throw InvalidArgument(s.path + ": Write() of undeclared tensor " + QuoteForMessage(name));
  }
  Impl::Pending& t = s.tensors[it->second];
  s.SkipComplete();
  if (it->second != s.cursor) {
    // A zero-byte write to a tensor that is already complete (e.g. an empty
    // tensor) is harmless, so that callers may loop over every tensor.
    if (nbytes == 0 && t.written == t.nbytes) return;
    if (s.cursor >= s.tensors.size()) {
      throw InvalidArgument(s.path + ": tensor " + QuoteForMessage(name) + ": " +
                            std::to_string(nbytes) +
                            " bytes written after all tensors are complete");
    }
    throw InvalidArgument(s.path + ": tensor " + QuoteForMessage(name) +
                          " written out of order; the next tensor to write is " +
                          QuoteForMessage(s.tensors[s.cursor].name) + " (declaration order)");
  }
  if (nbytes > t.nbytes - t.written) {
    throw InvalidArgument(s.path + ": tensor " + QuoteForMessage(name) + ": writing " +
                          std::to_string(nbytes) + " bytes after " + std::to_string(t.written) +
                          " exceeds its " + std::to_string(t.nbytes) + " bytes (" +
                          DTypeName(t.dtype) + " " + ShapeString(t.shape) + ")");
  }
  if (nbytes > 0 && data == nullptr) {
    throw InvalidArgument(s.path + ": tensor " + QuoteForMessage(name) + ": null data");
  }
  if (!s.header_written) s.WriteHeader();
  s.Append(data, nbytes);
  t.written += nbytes;
}

void SafetensorsWriter::Commit() {
  Impl& s = *impl_;
  s.CheckUsable("Commit()");
  s.SkipComplete();
  if (s.cursor < s.tensors.size()) {
    const Impl::Pending& t = s.tensors[s.cursor];
    throw FailedPrecondition(s.path + ": Commit() with tensor " + QuoteForMessage(t.name) +
                             " incomplete: " + std::to_string(t.written) + " of " +
                             std::to_string(t.nbytes) + " bytes written");
  }
  if (!s.header_written) s.WriteHeader();
  s.Flush();
  auto fail = [&](const char* op) {
    int err = errno;
    s.failed = true;
    throw ErrnoError(err, s.tmp_path + ": " + op + " failed");
  };
  if (::fchmod(s.fd, s.mode) != 0) fail("fchmod");
  if (::fsync(s.fd) != 0) fail("fsync");
  int fd = s.fd;
  s.fd = -1;
  if (::close(fd) != 0) fail("close");
  if (::rename(s.tmp_path.c_str(), s.path.c_str()) != 0) fail("rename");
  s.committed = true;
  // Make the rename durable. A failure here leaves a complete file in place.
  std::string dir = ".";
  size_t slash = s.path.rfind('/');
  if (slash != std::string::npos) dir = slash == 0 ? "/" : s.path.substr(0, slash);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

uint64_t SafetensorsWriter::bytes_written() const { return impl_->bytes_written; }

void WriteSafetensors(const std::string& path, const std::vector<TensorBytes>& tensors,
                      const std::map<std::string, std::string>& metadata, unsigned mode) {
  SafetensorsWriter w(path, metadata, mode);
  for (const TensorBytes& t : tensors) w.Declare(t.name, t.dtype, t.shape);
  for (const TensorBytes& t : tensors) {
    w.Write(t.name, t.data, static_cast<size_t>(NumElements(t.shape) * DTypeSize(t.dtype)));
  }
  w.Commit();
}

void SafetensorsFile::Evict(const TensorInfo& info) const {
  if (map_ == nullptr || info.nbytes == 0) return;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t begin = data_start_ + info.offset, end = begin + info.nbytes;
  const uint64_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last > first && last <= map_size_) {
    ::madvise(static_cast<uint8_t*>(map_) + first, last - first, MADV_DONTNEED);
  }
}

}  // namespace stip
