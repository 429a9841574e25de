// Advisory locks between processes that share a directory (the developer's
// state, a client's data directory): flock(2) on a lock file.
#pragma once

#include <memory>
#include <string>

namespace stip {

// An exclusive flock(2) on a lock file, released on destruction.
class FileLock {
 public:
  explicit FileLock(const std::string& path);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  // The lock if it is free now, else null (another process holds it).
  static std::unique_ptr<FileLock> TryLock(const std::string& path);

 private:
  FileLock() = default;
  int fd_ = -1;
};

}  // namespace stip
