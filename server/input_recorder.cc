#include "server/input_recorder.h"

#include <spdlog/spdlog.h>

#include "common/engine/tensor_util.h"
#include "common/format/safetensors.h"
#include "common/util/files.h"

namespace stip {

InputRecorder::InputRecorder(std::string dir) : dir_(std::move(dir)) {
  if (!IsDirectory(dir_)) MakeDirectories(dir_, 0700);
}

void InputRecorder::Record(const std::string& session_id, const std::string& instance_id,
                           const at::Tensor& hidden) const {
  try {
    at::Tensor c = hidden.to(at::kCPU).contiguous();
    WriteSafetensors(JoinPath(dir_, session_id + ".safetensors"),
                     {{"hidden", FromScalarType(c.scalar_type()), c.sizes().vec(), c.data_ptr()}},
                     {{"instance_id", instance_id}}, 0600);
  } catch (const std::exception& e) {
    spdlog::warn("record-inputs: cannot record session {}: {}", session_id, e.what());
  }
}

}  // namespace stip
