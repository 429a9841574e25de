// A TLS channel to a daemon on localhost with certificates from a demo PKI
// directory (deploy/make-demo-ca.sh): ca.pem, and NAME.pem / NAME.key as the
// client certificate when `cert` is not empty.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "common/rpc/tls.h"
#include "common/util/files.h"

namespace stip::test {

inline std::shared_ptr<grpc::Channel> PkiChannel(const std::string& pki_dir, int port,
                                                 const std::string& cert = "") {
  TlsOptions tls;
  tls.ca_file = JoinPath(pki_dir, "ca.pem");
  if (!cert.empty()) {
    tls.cert_file = JoinPath(pki_dir, cert + ".pem");
    tls.key_file = JoinPath(pki_dir, cert + ".key");
  }
  return MakeChannel("localhost:" + std::to_string(port), tls, "test");
}

}  // namespace stip::test
