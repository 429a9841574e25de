// Streaming transformation of a checkpoint on disk (`stip-developer
// transform`): reads the plaintext model tensor by tensor from its
// memory-mapped (possibly sharded) safetensors, permutes each, and writes
//   <out>/server/  the server's checkpoint: same format and tensor names, an
//                  untied lm_head, no embedding tables, no key material;
//                  config.json records the instance id only;
//   <out>/client/  the client bundle (mode 0700): embedding-side tensors,
//                  client_keys.safetensors (p, p_c; 0600), tokenizer files,
//                  config and generation config.
// Peak memory is about twice the largest tensor.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "common/keys/model_keys.h"

namespace stip {

struct TransformOptions {
  // Shard the server checkpoint into files of at most this many bytes
  // (0: never shard). Sharded output uses model-0000i-of-0000n.safetensors and
  // model.safetensors.index.json like transformers.
  uint64_t max_shard_bytes = uint64_t{4} << 30;
  // Draw a progress bar on stderr (only when it is a terminal).
  bool progress = true;
};

struct TransformStats {
  uint64_t tensors = 0;
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  int shards = 0;
  double seconds = 0;
};

// Writes <out_dir>/server and <out_dir>/client. Refuses to overwrite existing
// output. Keys must have been made for this model (fingerprint checked by the
// caller) and are validated against its config.
TransformStats TransformCheckpoint(const std::string& model_dir, const std::string& out_dir,
                                   const ModelKeys& keys, const TransformOptions& options = {});

// Writes only the server checkpoint into `server_dir` (created; must not exist).
TransformStats WriteServerCheckpoint(const std::string& model_dir, const std::string& server_dir,
                                     const ModelKeys& keys, const TransformOptions& options);

// Writes only the client bundle into `client_dir` (created 0700; must not exist).
void WriteClientBundle(const std::string& model_dir, const std::string& client_dir,
                       const ModelKeys& keys);

}  // namespace stip
