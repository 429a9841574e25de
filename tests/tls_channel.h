// A demo PKI for tests (deploy/make-demo-ca.sh) and TLS channels to a daemon on
// localhost with its certificates: ca.pem, and NAME.pem / NAME.key as the
// client certificate when `cert` is not empty.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "common/rpc/tls.h"
#include "common/util/files.h"
#include "tests/process_util.h"

namespace stip::test {

// Makes the demo PKI in `dir` (created 0700 if missing): ca.pem / ca.key, and
// server, developer (CN stip-developer; server and client auth) and client
// (CN stip-client; server and client auth) certificates with their keys, for
// localhost and 127.0.0.1. A second call with another directory makes an
// unrelated CA with certificates of the same names. Throws if it fails.
inline void MakeDemoPki(const std::string& dir) {
  RunResult r =
      Run({"/bin/bash", std::string(STIP_SOURCE_DIR) + "/deploy/make-demo-ca.sh", dir}, 60);
  if (r.exit_code != 0) throw std::runtime_error("make-demo-ca.sh failed: " + r.err);
}

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
