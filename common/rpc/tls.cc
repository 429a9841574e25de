#include "common/rpc/tls.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/util/files.h"

namespace stip {

namespace {

std::string ReadPem(const std::string& path, const std::string& what) {
  if (path.empty()) throw InvalidArgument(what + " file not given (or pass --insecure)");
  try {
    return ReadFile(path);
  } catch (const Error&) {
    throw NotFound(what + " " + path + ": cannot read");
  }
}

}  // namespace

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsOptions& tls,
                                                               const std::string& who) {
  if (tls.insecure) {
    spdlog::warn("{}: serving WITHOUT TLS (--insecure): traffic and credentials travel in clear",
                 who);
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions opts(
      tls.require_client_cert ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                              : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  opts.pem_key_cert_pairs.push_back(
      {ReadPem(tls.key_file, who + " TLS private key"), ReadPem(tls.cert_file, who + " TLS certificate")});
  if (tls.require_client_cert || !tls.ca_file.empty()) {
    opts.pem_root_certs = tls.ca_pem.empty() ? ReadPem(tls.ca_file, who + " CA certificate") : tls.ca_pem;
  }
  return grpc::SslServerCredentials(opts);
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsOptions& tls,
                                                                 const std::string& who) {
  if (tls.insecure) {
    spdlog::warn("{}: connecting WITHOUT TLS (--insecure)", who);
    return grpc::InsecureChannelCredentials();
  }
  grpc::SslCredentialsOptions opts;
  if (!tls.ca_pem.empty()) {
    opts.pem_root_certs = tls.ca_pem;
  } else if (!tls.ca_file.empty()) {
    opts.pem_root_certs = ReadPem(tls.ca_file, who + " CA certificate");
  }
  if (!tls.cert_file.empty()) {
    opts.pem_cert_chain = ReadPem(tls.cert_file, who + " TLS certificate");
    opts.pem_private_key = ReadPem(tls.key_file, who + " TLS private key");
  }
  return grpc::SslCredentials(opts);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, const TlsOptions& tls,
                                           const std::string& who) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // After a lost connection gRPC dials again with its own backoff (1 s
  // growing to 120 s by default), failing calls at once in between: a
  // restarted server would stay unreachable for long after it is back.
  // Callers retry with their own policy (client/reconnect.h); keep gRPC's
  // short.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 250);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  if (!tls.server_name_override.empty()) {
    args.SetSslTargetNameOverride(tls.server_name_override);
  }
  return grpc::CreateCustomChannel(address, MakeChannelCredentials(tls, who), args);
}

}  // namespace stip
