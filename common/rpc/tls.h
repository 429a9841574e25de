// Transport security for every link. TLS is the default; plaintext exists
// only behind an explicit --insecure flag and logs a warning. Certificates
// and keys come from PEM files (deploy/make-demo-ca.sh makes a demo CA).
#pragma once

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

namespace stip {

struct TlsOptions {
  bool insecure = false;   // plaintext (warns)
  std::string cert_file;   // our certificate chain (PEM)
  std::string key_file;    // our private key (PEM; should be 0600)
  std::string ca_file;     // CA to verify the peer with ("" = system roots for clients)
  std::string ca_pem;      // alternatively the CA itself (e.g. from a client bundle)
  bool require_client_cert = false;  // servers: mutual TLS
  std::string server_name_override;  // clients: expected name in the server's certificate
};

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsOptions& tls,
                                                               const std::string& who);
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsOptions& tls,
                                                                 const std::string& who);
// A channel with stip's message size limits and keepalive settings.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address, const TlsOptions& tls,
                                           const std::string& who);

// Messages carry whole prefills (x' for a long prompt) and logits of large
// vocabularies: 256 MiB covers a 32k-token prefill at d = 4096 in fp16.
constexpr int kMaxMessageBytes = 256 << 20;

}  // namespace stip
