// Loads libstip_sentencepiece.so with its own symbol scope (see tokenizer.h).
#include <dlfcn.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/tokenizer/tokenizer.h"

namespace stip {

namespace {

using OpenFn = Tokenizer* (*)(const char*, const char*, int*, char*, size_t);

std::string ExecutableDir() {
  std::vector<char> buf(4096);
  ssize_t n = readlink("/proc/self/exe", buf.data(), buf.size() - 1);
  if (n <= 0) return ".";
  std::string path(buf.data(), static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STIP_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define STIP_SANITIZED 1
#endif
#endif

void* OpenDeepBound(const std::string& path) {
  constexpr int kFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;
#ifdef STIP_SANITIZED
  // ASan's and TSan's dlopen interceptors abort on RTLD_DEEPBIND, because a
  // deep-bound library would find libc's malloc before the sanitizer's. Our
  // module is built with the same -fsanitize flags, so the sanitizer runtime
  // is its first dependency and comes first in its deep-bound scope: malloc
  // and operator new still bind to the runtime. Dropping DEEPBIND instead
  // would let sentencepiece's embedded protobuf bind to LibTorch's
  // libprotobuf (a different version). dlmopen(LM_ID_BASE) is the same load
  // in the same namespace, and is not intercepted (deploy/sanitize.sh).
  return dlmopen(LM_ID_BASE, path.c_str(), kFlags);
#else
  return dlopen(path.c_str(), kFlags);
#endif
}

OpenFn Module() {
  static std::once_flag once;
  static OpenFn fn = nullptr;
  static std::string error;
  std::call_once(once, [] {
    const char* name = "libstip_sentencepiece.so";
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("STIP_SENTENCEPIECE_MODULE")) candidates.push_back(env);
    const std::string exe = ExecutableDir();
    candidates.push_back(exe + "/" + name);
    candidates.push_back(exe + "/../lib/stip/" + name);
#ifdef STIP_MODULE_BUILD_DIR
    candidates.push_back(std::string(STIP_MODULE_BUILD_DIR) + "/" + name);
#endif
#ifdef STIP_MODULE_INSTALL_DIR
    candidates.push_back(std::string(STIP_MODULE_INSTALL_DIR) + "/" + name);
#endif
    for (const std::string& path : candidates) {
      if (access(path.c_str(), R_OK) != 0) continue;
      // RTLD_DEEPBIND: sentencepiece binds to its own protobuf, not to the
      // process's (LibTorch's / gRPC's); RTLD_LOCAL: nor does anyone else see its copy.
      void* handle = OpenDeepBound(path);
      if (!handle) {
        error = path + ": " + dlerror();
        continue;
      }
      fn = reinterpret_cast<OpenFn>(dlsym(handle, "stip_sentencepiece_open"));
      if (fn) return;
      error = path + ": no entry point stip_sentencepiece_open";
    }
    if (error.empty())
      error = std::string(name) + " not found next to the executable or in " +
              "STIP_SENTENCEPIECE_MODULE";
  });
  if (!fn) throw Internal("cannot load the SentencePiece module: " + error);
  return fn;
}

}  // namespace

std::unique_ptr<Tokenizer> LoadSentencePieceTokenizer(const std::string& model_path,
                                                      const std::string& config_path) {
  OpenFn open = Module();
  int code = 0;
  char message[1024] = {0};
  Tokenizer* t = open(model_path.c_str(), config_path.c_str(), &code, message, sizeof message);
  if (!t) throw Error(static_cast<ErrorCode>(code), message);
  return std::unique_ptr<Tokenizer>(t);
}

}  // namespace stip
