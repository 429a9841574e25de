#include "client/registration.h"

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <chrono>

#include "client/remote_session.h"
#include "common/error.h"
#include "common/rpc/file_transfer.h"
#include "common/rpc/status.h"
#include "common/util/files.h"
#include "stip/v1/stip.grpc.pb.h"

namespace stip {

namespace {

// A client bundle holds embeddings (0.5 GiB for LLaMA-70B in fp16), keys and
// tokenizer files: far below these limits.
ReceiveLimits BundleLimits() {
  ReceiveLimits limits;
  limits.max_total_bytes = uint64_t{64} << 30;
  limits.max_files = 256;
  return limits;
}

// Removes what an interrupted earlier transfer left in the data directory.
void RemoveLeftovers(const DataDir& dir, const std::string& new_bundle) {
  RemoveAll(new_bundle);
  const std::string prefix = "bundle.new.tmp-";
  for (const std::string& name : ListDirectory(dir.path())) {
    if (name.compare(0, prefix.size(), prefix) == 0) RemoveAll(JoinPath(dir.path(), name));
  }
}

Error RegistryError(const grpc::Status& status, const std::string& address,
                    const std::string& what) {
  const std::string msg = status.error_message();
  const ErrorCode code = FromGrpcCode(status.error_code());
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      return Error(code, "cannot reach the developer's registry at " + address + ": " + msg);
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
      return Error(code, "the developer's registry at " + address + " refused the " + what + " (" +
                             ErrorCodeName(code) + ": " + msg + ")");
    default:
      return Error(code, "the developer's registry at " + address + " failed the " + what + ": " +
                             ErrorCodeName(code) + ": " + msg);
  }
}

RegistrationResult Receive(grpc::ClientReader<v1::BundleChunk>& reader,
                           grpc::ClientContext& context, const std::string& address,
                           const std::string& what, const DataDir& dir,
                           const RegistryTrust& trust) {
  const std::string new_bundle = dir.bundle_dir() + ".new";
  RemoveLeftovers(dir, new_bundle);
  v1::BundleChunk msg;
  std::unique_ptr<DirectoryReceiver> receiver;
  RegistrationResult result;
  std::string sha;
  bool trailer = false;
  try {
    while (reader.Read(&msg)) {
      switch (msg.part_case()) {
        case v1::BundleChunk::kHeader: {
          if (receiver) throw InvalidArgument("the bundle stream has a second header");
          const v1::BundleHeader& h = msg.header();
          if (h.instance_id().empty()) throw InvalidArgument("the bundle header names no instance");
          if (h.server_address().empty()) {
            throw InvalidArgument("the bundle header names no server address");
          }
          if (h.access_token().empty())
            throw InvalidArgument("the bundle header has no access token");
          receiver = std::make_unique<DirectoryReceiver>(new_bundle, h.files(), BundleLimits(),
                                                         0700, /*honour_file_modes=*/false);
          Credentials& c = result.credentials;
          c.user = h.user();
          c.instance_id = h.instance_id();
          c.server_address = h.server_address();
          c.access_token = h.access_token();
          c.server_ca_pem = h.server_ca_pem();
          c.developer = address;
          c.developer_ca_pem = trust.ca_pem;
          c.developer_insecure = trust.insecure;
          result.files = h.files_size();
          break;
        }
        case v1::BundleChunk::kChunk:
          if (!receiver) throw InvalidArgument("bundle data before the header");
          if (trailer) throw InvalidArgument("bundle data after the trailer");
          receiver->Accept(msg.chunk());
          break;
        case v1::BundleChunk::kTrailer:
          if (!receiver) throw InvalidArgument("bundle trailer before the header");
          if (trailer) throw InvalidArgument("the bundle stream has a second trailer");
          sha = msg.trailer().sha256();
          trailer = true;
          break;
        default:
          throw InvalidArgument("empty message in the bundle stream");
      }
    }
  } catch (const Error& e) {
    context.TryCancel();
    reader.Finish();
    throw Error(e.code(),
                "receiving the bundle from " + address + ": " + e.what() + "; nothing was stored");
  }
  grpc::Status status = reader.Finish();
  if (!status.ok()) throw RegistryError(status, address, what);
  if (!receiver) throw DataLoss("the developer's registry at " + address + " sent no bundle");
  if (!trailer) {
    throw DataLoss("the bundle stream from " + address +
                   " ended without its trailer; nothing was stored");
  }
  result.bytes = receiver->bytes_received();
  // Digest, then the content, checked before the directory becomes visible
  // (the receiver removes its temporary directory on any failure).
  receiver->VerifyDigest(sha);
  try {
    ClientBundle::Check(receiver->temp_dir(), result.credentials.instance_id);
  } catch (const Error& e) {
    throw Error(e.code(), std::string("the received bundle is not usable: ") + e.what() +
                              "; nothing was stored");
  }
  receiver->Commit();
  receiver.reset();
  dir.Install(new_bundle, result.credentials);
  return result;
}

}  // namespace

RegistrationResult RegisterWithDeveloper(std::shared_ptr<grpc::Channel> channel,
                                         const std::string& developer_address,
                                         const std::string& user,
                                         const std::string& enrolment_token,
                                         const DataDir& data_dir, const RegistryTrust& trust) {
  if (user.empty()) throw InvalidArgument("a user name is needed");
  if (enrolment_token.empty()) throw InvalidArgument("an enrolment token is needed");
  data_dir.EnsureExists();
  auto stub = v1::Registry::NewStub(channel);
  grpc::ClientContext context;
  v1::RegisterRequest req;
  req.set_user(user);
  req.set_enrolment_token(enrolment_token);
  auto reader = stub->Register(&context, req);
  return Receive(*reader, context, developer_address, "registration", data_dir, trust);
}

RegistrationResult FetchBundleFromDeveloper(std::shared_ptr<grpc::Channel> channel,
                                            const std::string& developer_address,
                                            const DataDir& data_dir) {
  Credentials current = data_dir.LoadCredentials();
  if (current.user.empty()) throw FailedPrecondition("the stored credentials name no user");
  auto stub = v1::Registry::NewStub(channel);
  grpc::ClientContext context;
  v1::FetchBundleRequest req;
  req.set_user(current.user);
  req.set_access_token(current.access_token);
  auto reader = stub->FetchBundle(&context, req);
  RegistryTrust trust;
  trust.ca_pem = current.developer_ca_pem;
  trust.insecure = current.developer_insecure;
  return Receive(*reader, context, developer_address, "bundle fetch", data_dir, trust);
}

Credentials RenewAccessToken(std::shared_ptr<grpc::Channel> channel, const DataDir& data_dir,
                             std::string* moved_to) {
  Credentials c = data_dir.LoadCredentials();
  if (c.user.empty()) throw FailedPrecondition("the stored credentials name no user");
  auto stub = v1::Registry::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::RenewTokenRequest req;
  req.set_user(c.user);
  req.set_access_token(c.access_token);
  v1::RenewTokenResponse resp;
  grpc::Status status = stub->RenewToken(&context, req, &resp);
  if (!status.ok()) throw RegistryError(status, c.developer, "token renewal");
  if (resp.access_token().empty() || resp.instance_id().empty()) {
    throw Error(ErrorCode::kInternal,
                "the developer's registry at " + c.developer + " renewed with no token");
  }
  if (moved_to) *moved_to = resp.instance_id() == c.instance_id ? "" : resp.instance_id();
  c.access_token = resp.access_token();
  data_dir.SaveCredentials(c);
  return c;
}

}  // namespace stip
