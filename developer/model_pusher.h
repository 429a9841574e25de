// Pushing a transformed model (an instance's server/ directory) to a
// stip-server's ModelStore: a client-streaming Upload of header (instance id,
// files, load), chunks of 1 MiB, and a trailer with the SHA-256 of the
// content (common/rpc/file_transfer.h).
#pragma once

#include <grpcpp/channel.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/auth/access_token.h"
#include "common/rpc/tls.h"
#include "stip/v1/stip.pb.h"

namespace stip {

struct PushOptions {
  size_t chunk_bytes = size_t{1} << 20;
  bool load = true;  // ask the server to load the model once stored
};

struct PushResult {
  bool already_stored = false;  // the server had it (ALREADY_EXISTS or listed)
  uint64_t files = 0;
  uint64_t bytes = 0;  // content bytes sent
  double seconds = 0;
  std::string sha256;  // digest sent in the trailer ("" if nothing was sent)
  v1::ModelInfo info;  // the server's answer to Upload
};

// Reads the instance id recorded in a transformed checkpoint's config.json
// ({"stip": {"instance": ...}}); kInvalidArgument if it has none.
std::string InstanceIdOfServerDir(const std::string& server_dir);

// Uploads `server_dir` as `instance_id`. ALREADY_EXISTS counts as success
// (already_stored). Any other failure throws stip::Error with the server's
// status mapped (common/rpc/status.h: DATA_LOSS when the server's digest
// differed, kUnavailable when the server cannot be reached).
PushResult PushModel(const std::shared_ptr<grpc::Channel>& channel, const std::string& instance_id,
                     const std::string& server_dir, const PushOptions& options = {});

// True iff the server lists `instance_id`. Throws like PushModel.
bool ServerHasModel(const std::shared_ptr<grpc::Channel>& channel, const std::string& instance_id,
                    int timeout_ms = 10000);

// Every model the server stores (ModelStore.List). Throws like PushModel.
std::vector<v1::ModelInfo> ListServerModels(const std::shared_ptr<grpc::Channel>& channel,
                                            int timeout_ms = 10000);

// ModelStore.SetAccess: registers `key_pem` (the developer's token public key),
// the previous keys still accepted and the complete revocation list for a
// stored instance. Throws like PushModel.
v1::AccessInfo PushAccess(const std::shared_ptr<grpc::Channel>& channel,
                          const std::string& instance_id, const std::string& key_pem,
                          const std::vector<auth::PreviousTokenKey>& previous,
                          const std::vector<auth::RevokedToken>& revoked, int timeout_ms = 30000);

// ModelStore.Retire: no new sessions on the instance; open ones may run
// `drain_seconds` more. Returns the server's ModelInfo; nullopt if the server
// does not store the instance (NOT_FOUND). Throws like PushModel otherwise.
std::optional<v1::ModelInfo> RetireOnServer(const std::shared_ptr<grpc::Channel>& channel,
                                            const std::string& instance_id, int64_t drain_seconds,
                                            int timeout_ms = 30000);

// ModelStore.Delete. True if deleted or not stored (NOT_FOUND); false while the
// instance has open sessions (FAILED_PRECONDITION). Throws like PushModel
// otherwise.
bool DeleteFromServer(const std::shared_ptr<grpc::Channel>& channel, const std::string& instance_id,
                      int timeout_ms = 60000);

struct RetryOptions {
  double max_seconds = 60;  // give up after this long without reaching the server
  double first_backoff_s = 0.25;
  double max_backoff_s = 4;
  const std::atomic<bool>* stop = nullptr;  // set: give up at once
};

// serve's start-up push: List first (if present, skip the upload, asking the
// server to Load it when options.load and it is not loaded), else Upload; retries
// with exponential backoff while the server is unreachable (UNAVAILABLE,
// DEADLINE_EXCEEDED) for up to `retry.max_seconds`. Other errors throw at once.
PushResult EnsureModelOnServer(const std::string& address, const TlsOptions& tls,
                               const std::string& instance_id, const std::string& server_dir,
                               const PushOptions& options = {}, const RetryOptions& retry = {});

}  // namespace stip
