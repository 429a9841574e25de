// libFuzzer target: the safetensors header parser (common/format/safetensors.cc)
// on arbitrary bytes. Contract: a stip::Error or a file whose every tensor
// lies inside the data section; anything else (a crash, an ASan/UBSan report,
// another exception type) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/error.h"
#include "common/format/dtype.h"
#include "common/format/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::shared_ptr<const stip::SafetensorsFile> file;
  try {
    file = stip::SafetensorsFile::FromBytes(std::string(reinterpret_cast<const char*>(data), size),
                                            "fuzz");
  } catch (const stip::Error&) {
    return 0;
  }
  uint64_t sum = 0;
  for (const stip::TensorInfo& t : file->tensors()) {
    // What the parser promised: shape x dtype size == the byte range, which
    // lies inside the input. Touch both ends so that ASan checks the range.
    const int64_t numel = t.numel();
    if (numel < 0 || static_cast<uint64_t>(numel) * stip::DTypeSize(t.dtype) != t.nbytes) abort();
    if (file->Find(t.name) != &t) abort();
    const uint8_t* p = file->Data(t);
    if (t.nbytes > 0) sum += p[0] + p[t.nbytes - 1];
    if (t.nbytes > size) abort();
  }
  for (const auto& [key, value] : file->metadata()) sum += key.size() + value.size();
  try {
    file->Get("\xff no such tensor");
    abort();  // Get must throw for a missing name
  } catch (const stip::Error&) {
  }
  return sum == 0xdeadbeef;  // keeps the reads alive
}
