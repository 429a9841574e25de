#include "developer/model_pusher.h"

#include <grpcpp/client_context.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/status.h"
#include "common/util/files.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip {

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Upload without throwing for gRPC failures: the status says what happened.
grpc::Status Upload(const std::shared_ptr<grpc::Channel>& channel, const std::string& instance_id,
                    const std::string& server_dir, const PushOptions& options, PushResult* result) {
  std::vector<OutgoingFile> files = ListFilesForTransfer(server_dir);
  if (files.empty()) throw NotFound(server_dir + ": no files to push");
  auto stub = v1::ModelStore::NewStub(channel);
  grpc::ClientContext ctx;
  v1::ModelInfo info;
  auto writer = stub->Upload(&ctx, &info);
  Clock::time_point start = Clock::now();

  v1::UploadRequest header;
  header.mutable_header()->set_instance_id(instance_id);
  header.mutable_header()->set_load(options.load);
  FillEntries(files, header.mutable_header()->mutable_files());
  bool ok = writer->Write(header);
  uint64_t bytes = 0;
  std::string digest;
  if (ok) {
    try {
      digest = StreamFiles(files, std::max<size_t>(options.chunk_bytes, 1),
                           [&](const v1::FileChunk& chunk) {
                             v1::UploadRequest req;
                             *req.mutable_chunk() = chunk;
                             bytes += chunk.data().size();
                             return writer->Write(req);
                           });
    } catch (const Error& e) {
      if (e.code() != ErrorCode::kInternal) throw;  // a local file problem
      ok = false;                                   // the stream broke: Finish() says why
    }
  }
  if (ok) {
    v1::UploadRequest trailer;
    trailer.mutable_trailer()->set_sha256(digest);
    ok = writer->Write(trailer);
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (status.ok() && !ok) {
    status = ToStatus(Internal("the upload stream broke"));
  }
  result->files = files.size();
  result->bytes = bytes;
  result->sha256 = digest;
  result->seconds = SecondsSince(start);
  if (status.ok()) result->info = info;
  if (status.error_code() == grpc::StatusCode::ALREADY_EXISTS) {
    result->already_stored = true;
    return grpc::Status::OK;
  }
  return status;
}

grpc::Status List(const std::shared_ptr<grpc::Channel>& channel, const std::string& instance_id,
                  int timeout_ms, bool* present, v1::ModelInfo* found = nullptr) {
  auto stub = v1::ModelStore::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  v1::ListModelsRequest req;
  v1::ListModelsResponse resp;
  grpc::Status status = stub->List(&ctx, req, &resp);
  *present = false;
  if (status.ok()) {
    for (const auto& m : resp.models()) {
      if (m.instance_id() != instance_id) continue;
      *present = true;
      if (found) *found = m;
    }
  }
  return status;
}

bool Retryable(const grpc::Status& s) {
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ||
         s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

}  // namespace

std::string InstanceIdOfServerDir(const std::string& server_dir) {
  std::string path = JoinPath(server_dir, "config.json");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(ReadFile(path));
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object() || !j.contains("stip") || !j["stip"].is_object() ||
      !j["stip"].contains("instance") || !j["stip"]["instance"].is_string()) {
    throw InvalidArgument(path + ": no stip.instance record; is " + server_dir +
                          " a transformed server checkpoint?");
  }
  return j["stip"]["instance"].get<std::string>();
}

PushResult PushModel(const std::shared_ptr<grpc::Channel>& channel, const std::string& instance_id,
                     const std::string& server_dir, const PushOptions& options) {
  PushResult result;
  grpc::Status status = Upload(channel, instance_id, server_dir, options, &result);
  if (!status.ok()) ThrowStatus(status, "upload of " + instance_id);
  return result;
}

bool ServerHasModel(const std::shared_ptr<grpc::Channel>& channel, const std::string& instance_id,
                    int timeout_ms) {
  bool present = false;
  grpc::Status status = List(channel, instance_id, timeout_ms, &present);
  if (!status.ok()) ThrowStatus(status, "listing the server's models");
  return present;
}

std::vector<v1::ModelInfo> ListServerModels(const std::shared_ptr<grpc::Channel>& channel,
                                            int timeout_ms) {
  auto stub = v1::ModelStore::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  v1::ListModelsResponse resp;
  grpc::Status status = stub->List(&ctx, v1::ListModelsRequest(), &resp);
  if (!status.ok()) ThrowStatus(status, "listing the server's models");
  return {resp.models().begin(), resp.models().end()};
}

v1::AccessInfo PushAccess(const std::shared_ptr<grpc::Channel>& channel,
                          const std::string& instance_id, const std::string& key_pem,
                          const std::vector<auth::PreviousTokenKey>& previous,
                          const std::vector<auth::RevokedToken>& revoked, int timeout_ms) {
  auto stub = v1::ModelStore::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  v1::SetAccessRequest req;
  req.set_instance_id(instance_id);
  req.set_token_key_pem(key_pem);
  for (const auth::PreviousTokenKey& p : previous) {
    v1::PreviousTokenKey* k = req.add_previous_token_keys();
    k->set_pem(p.key.pem());
    k->set_accepted_until(p.accepted_until);
  }
  for (const auth::RevokedToken& r : revoked) {
    v1::RevokedToken* t = req.add_revoked();
    t->set_token_id(r.token_id);
    t->set_expires_at(r.expires_at);
  }
  v1::AccessInfo info;
  grpc::Status status = stub->SetAccess(&ctx, req, &info);
  if (!status.ok()) ThrowStatus(status, "registering access for " + instance_id);
  return info;
}

std::optional<v1::ModelInfo> RetireOnServer(const std::shared_ptr<grpc::Channel>& channel,
                                            const std::string& instance_id, int64_t drain_seconds,
                                            int timeout_ms) {
  auto stub = v1::ModelStore::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  v1::RetireRequest req;
  req.set_instance_id(instance_id);
  req.set_drain_seconds(drain_seconds);
  v1::ModelInfo info;
  grpc::Status status = stub->Retire(&ctx, req, &info);
  if (status.error_code() == grpc::StatusCode::NOT_FOUND) return std::nullopt;
  if (!status.ok()) ThrowStatus(status, "retiring " + instance_id);
  return info;
}

bool DeleteFromServer(const std::shared_ptr<grpc::Channel>& channel, const std::string& instance_id,
                      int timeout_ms) {
  auto stub = v1::ModelStore::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  v1::ModelRef ref;
  ref.set_instance_id(instance_id);
  v1::DeleteModelResponse resp;
  grpc::Status status = stub->Delete(&ctx, ref, &resp);
  if (status.ok() || status.error_code() == grpc::StatusCode::NOT_FOUND) return true;
  if (status.error_code() == grpc::StatusCode::FAILED_PRECONDITION) return false;
  ThrowStatus(status, "deleting " + instance_id);
}

PushResult EnsureModelOnServer(const std::string& address, const TlsOptions& tls,
                               const std::string& instance_id, const std::string& server_dir,
                               const PushOptions& options, const RetryOptions& retry) {
  Clock::time_point start = Clock::now();
  double backoff = retry.first_backoff_s;
  int attempt = 0;
  for (;;) {
    ++attempt;
    // A fresh channel per attempt: no inherited reconnect backoff.
    std::shared_ptr<grpc::Channel> channel = MakeChannel(address, tls, "stip-developer");
    bool present = false;
    v1::ModelInfo listed;
    grpc::Status status = List(channel, instance_id, 5000, &present, &listed);
    if (status.ok() && present) {
      PushResult r;
      r.already_stored = true;
      r.info = listed;
      if (options.load && !listed.loaded()) {
        // Stored but not in memory (e.g. the server restarted): ask for it.
        auto stub = v1::ModelStore::NewStub(channel);
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
        v1::ModelRef ref;
        ref.set_instance_id(instance_id);
        v1::ModelInfo loaded;
        grpc::Status s = stub->Load(&ctx, ref, &loaded);
        if (s.ok()) {
          r.info = loaded;
        } else {
          spdlog::warn("server {} stores instance {} but could not load it: {}", address,
                       instance_id, s.error_message());
        }
      }
      return r;
    }
    PushResult result;
    if (status.ok()) {
      status = Upload(channel, instance_id, server_dir, options, &result);
      if (status.ok()) return result;
    }
    if (!Retryable(status)) ThrowStatus(status, address);
    double elapsed = SecondsSince(start);
    if (elapsed >= retry.max_seconds || (retry.stop && retry.stop->load())) {
      throw Error(ErrorCode::kUnavailable,
                  address + ": unavailable after " + std::to_string(attempt) + " attempts in " +
                      std::to_string(static_cast<int>(elapsed)) + " s: " + status.error_message());
    }
    double wait = std::min(backoff, std::max(0.0, retry.max_seconds - elapsed));
    spdlog::info("server {} not reachable yet ({}); retrying in {:.2f} s", address,
                 status.error_message(), wait);
    Clock::time_point until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(wait));
    while (Clock::now() < until && !(retry.stop && retry.stop->load())) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    backoff = std::min(backoff * 2, retry.max_backoff_s);
  }
}

}  // namespace stip
