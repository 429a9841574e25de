// Test-only observation point (--record-inputs DIR, off by default): writes
// the first x' each session receives to DIR/<session_id>.safetensors (0600),
// so that tests can check that what reaches the server is permuted. It
// records only what the server legitimately sees.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace stip {

class InputRecorder {
 public:
  explicit InputRecorder(std::string dir);  // creates DIR (0700) if missing
  // Tensor "hidden" (the wire datatype), metadata instance_id.
  // Failures are logged, never thrown: recording must not affect serving.
  void Record(const std::string& session_id, const std::string& instance_id,
              const at::Tensor& hidden) const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

}  // namespace stip
