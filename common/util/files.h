// Small filesystem helpers with the safety properties stip relies on:
// atomic replacement (write to a temporary name, fsync, rename), explicit
// modes that do not depend on the umask, and clear errors naming the path.
#pragma once

#include <string>
#include <vector>

namespace stip {

std::string ReadFile(const std::string& path);  // throws kNotFound
// Writes `content` to `path` atomically with the given mode.
void WriteFileAtomic(const std::string& path, const std::string& content, unsigned mode = 0644);
bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);
// mkdir -p; the last component gets `mode` (chmod'ed even if it existed).
void MakeDirectories(const std::string& path, unsigned mode = 0755);
// A fresh, empty directory next to `final_path` ("<final_path>.tmp-XXXXXX"), mode `mode`.
std::string MakeTempDirectoryBeside(const std::string& final_path, unsigned mode = 0700);
// rm -rf (no error if missing).
void RemoveAll(const std::string& path);
// rename(2) with an error naming both paths.
void RenamePath(const std::string& from, const std::string& to);
void CopyFile(const std::string& from, const std::string& to, unsigned mode = 0644);
// fsync a directory so that a rename inside it is durable.
void SyncDirectory(const std::string& dir);
std::string JoinPath(const std::string& a, const std::string& b);
std::vector<std::string> ListDirectory(const std::string& dir);  // names, sorted

}  // namespace stip
