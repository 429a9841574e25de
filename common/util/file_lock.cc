#include "common/util/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace stip {

FileLock::FileLock(const std::string& path) {
  fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) throw Internal(path + ": cannot open lock file (" + std::strerror(errno) + ")");
  while (flock(fd_, LOCK_EX) != 0) {
    if (errno == EINTR) continue;
    int err = errno;
    close(fd_);
    fd_ = -1;
    throw Internal(path + ": cannot lock (" + std::strerror(err) + ")");
  }
}

std::unique_ptr<FileLock> FileLock::TryLock(const std::string& path) {
  std::unique_ptr<FileLock> lock(new FileLock());
  lock->fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock->fd_ < 0) {
    throw Internal(path + ": cannot open lock file (" + std::strerror(errno) + ")");
  }
  while (flock(lock->fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) return nullptr;  // the destructor closes the file
    throw Internal(path + ": cannot lock (" + std::strerror(errno) + ")");
  }
  return lock;
}

FileLock::~FileLock() {
  if (fd_ >= 0) close(fd_);  // releases the lock
}

}  // namespace stip
