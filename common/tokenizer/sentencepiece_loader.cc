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
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
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
