// ModelStore calls for tests that talk to a stip server's admin port directly
// (server_test, hostile_input_test, e2e_test, fault_test): uploads, with hooks
// to break them, SetAccess and List.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/auth/access_token.h"
#include "common/error.h"
#include "common/rpc/file_transfer.h"
#include "common/util/files.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip::test {

// An upload of a directory's files, and how to break it.
struct UploadPlan {
  std::vector<OutgoingFile> files;
  std::string instance_id;
  bool load = true;
  size_t chunk_bytes = 16 << 10;
  // Chunk -> chunks to send instead (none: stop sending data, then the trailer).
  std::function<std::vector<v1::FileChunk>(const v1::FileChunk&, int index)> mangle;
  // Asked before chunk `index`: true ends the upload there without a trailer
  // (the hook may cancel `ctx` or stop the server first); Upload returns the
  // call's status.
  std::function<bool(int index, grpc::ClientContext& ctx)> interrupt;
  bool send_trailer = true;
  std::string sha_override;  // a wrong digest in the trailer
};

inline UploadPlan PlanFor(const std::string& dir, const std::string& instance_id) {
  UploadPlan p;
  p.files = ListFilesForTransfer(dir);
  p.instance_id = instance_id;
  return p;
}

// ModelStore.Upload as the plan says (60 s for the whole call).
inline grpc::Status Upload(const std::shared_ptr<grpc::Channel>& admin, const UploadPlan& plan,
                           v1::ModelInfo* info = nullptr) {
  auto stub = v1::ModelStore::NewStub(admin);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::ModelInfo response;
  auto writer = stub->Upload(&ctx, &response);
  v1::UploadRequest req;
  req.mutable_header()->set_instance_id(plan.instance_id);
  req.mutable_header()->set_load(plan.load);
  FillEntries(plan.files, req.mutable_header()->mutable_files());
  writer->Write(req);
  int index = 0;
  bool stopped = false;
  std::string sha;
  try {
    sha = StreamFiles(plan.files, plan.chunk_bytes, [&](const v1::FileChunk& chunk) {
      if (plan.interrupt && plan.interrupt(index, ctx)) return false;
      std::vector<v1::FileChunk> out = {chunk};
      if (plan.mangle) out = plan.mangle(chunk, index);
      ++index;
      if (out.empty()) {
        stopped = true;
        return false;
      }
      for (const v1::FileChunk& c : out) {
        v1::UploadRequest r;
        *r.mutable_chunk() = c;
        if (!writer->Write(r)) return false;
      }
      return true;
    });
  } catch (const Error&) {
    if (!stopped) return writer->Finish();  // the server ended the call, or the hook did
  }
  if (plan.send_trailer) {
    v1::UploadRequest trailer;
    trailer.mutable_trailer()->set_sha256(plan.sha_override.empty() ? (sha.empty() ? "0" : sha)
                                                                    : plan.sha_override);
    writer->Write(trailer);
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (info) *info = response;
  return status;
}

// The whole directory, as the developer uploads it.
inline grpc::Status Upload(const std::shared_ptr<grpc::Channel>& admin, const std::string& dir,
                           const std::string& instance_id, v1::ModelInfo* info = nullptr) {
  return Upload(admin, PlanFor(dir, instance_id), info);
}

// Whether an upload's temporary directory ("<id>.tmp-XXXXXX") is in `models_dir`.
inline bool HasTempEntry(const std::string& models_dir) {
  for (const std::string& n : ListDirectory(models_dir)) {
    if (n.find(".tmp-") != std::string::npos) return true;
  }
  return false;
}

// ModelStore.SetAccess: the token key, revocations and previous keys
// ({pem, accepted_until}) of an instance.
inline grpc::Status SetAccess(const std::shared_ptr<grpc::Channel>& admin, const std::string& id,
                              const std::string& key_pem,
                              const std::vector<auth::RevokedToken>& revoked = {},
                              v1::AccessInfo* info = nullptr,
                              const std::vector<std::pair<std::string, int64_t>>& previous = {}) {
  auto stub = v1::ModelStore::NewStub(admin);
  grpc::ClientContext ctx;
  v1::SetAccessRequest req;
  req.set_instance_id(id);
  req.set_token_key_pem(key_pem);
  for (const auto& [pem, until] : previous) {
    v1::PreviousTokenKey* k = req.add_previous_token_keys();
    k->set_pem(pem);
    k->set_accepted_until(until);
  }
  for (const auto& r : revoked) {
    v1::RevokedToken* t = req.add_revoked();
    t->set_token_id(r.token_id);
    t->set_expires_at(r.expires_at);
  }
  v1::AccessInfo ignored;
  return stub->SetAccess(&ctx, req, info ? info : &ignored);
}

// ModelStore.List (10 s).
inline grpc::Status ListModels(const std::shared_ptr<grpc::Channel>& channel,
                               v1::ListModelsResponse* resp = nullptr) {
  auto stub = v1::ModelStore::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListModelsResponse ignored;
  return stub->List(&ctx, v1::ListModelsRequest(), resp ? resp : &ignored);
}

// The models listed (the call must succeed).
inline std::vector<v1::ModelInfo> Models(const std::shared_ptr<grpc::Channel>& channel) {
  v1::ListModelsResponse resp;
  grpc::Status s = ListModels(channel, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return {resp.models().begin(), resp.models().end()};
}

}  // namespace stip::test
