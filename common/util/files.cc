#include "common/util/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace stip {

namespace {
std::string Errno() { return std::strerror(errno); }
}  // namespace

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw NotFound(path + ": cannot open (" + Errno() + ")");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFileAtomic(const std::string& path, const std::string& content, unsigned mode) {
  std::string tmp = path + ".tmp-XXXXXX";
  std::vector<char> buf(tmp.begin(), tmp.end());
  buf.push_back('\0');
  int fd = mkstemp(buf.data());
  if (fd < 0) throw Internal(path + ": cannot create a temporary file (" + Errno() + ")");
  tmp = buf.data();
  bool ok = fchmod(fd, static_cast<mode_t>(mode)) == 0;
  size_t done = 0;
  while (ok && done < content.size()) {
    ssize_t n = write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = false;
      break;
    }
    done += static_cast<size_t>(n);
  }
  ok = ok && fsync(fd) == 0;
  std::string err = ok ? "" : Errno();
  close(fd);
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) {
    if (err.empty()) err = Errno();
    unlink(tmp.c_str());
    throw Internal(path + ": write failed (" + err + ")");
  }
}

bool PathExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void MakeDirectories(const std::string& path, unsigned mode) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec || !IsDirectory(path))
    throw Internal(path + ": cannot create directory (" + ec.message() + ")");
  if (chmod(path.c_str(), static_cast<mode_t>(mode)) != 0) {
    throw Internal(path + ": cannot set mode (" + Errno() + ")");
  }
}

std::string MakeTempDirectoryBeside(const std::string& final_path, unsigned mode) {
  std::string base = final_path;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  std::string parent = std::filesystem::path(base).parent_path().string();
  if (!parent.empty() && !IsDirectory(parent)) MakeDirectories(parent, 0755);
  std::string tmpl = base + ".tmp-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw Internal(tmpl + ": cannot create directory (" + Errno() + ")");
  if (chmod(buf.data(), static_cast<mode_t>(mode)) != 0) {
    throw Internal(std::string(buf.data()) + ": cannot set mode (" + Errno() + ")");
  }
  return buf.data();
}

void RemoveAll(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

void RenamePath(const std::string& from, const std::string& to) {
  if (rename(from.c_str(), to.c_str()) != 0) {
    throw Internal("cannot rename " + from + " to " + to + " (" + Errno() + ")");
  }
}

void CopyFile(const std::string& from, const std::string& to, unsigned mode) {
  WriteFileAtomic(to, ReadFile(from), mode);
}

void SyncDirectory(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    fsync(fd);
    close(fd);
  }
}

std::string JoinPath(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

std::vector<std::string> ListDirectory(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (!d) throw NotFound(dir + ": cannot list (" + Errno() + ")");
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace stip
