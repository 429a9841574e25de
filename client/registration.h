// Enrolment with the developer's Registry: Register (with a one-time
// enrolment token) and FetchBundle (with the access token, after the
// developer rotated the instance) both stream the client bundle
//   header {user, instance_id, server_address, access_token, files, server_ca_pem},
//   chunks, trailer {sha256}
// which is received into DIR/bundle.new (files 0600, directory 0700),
// verified (completeness, SHA-256, keys and config consistent), and only then
// swapped in for DIR/bundle, with the connection details in
// DIR/credentials.json (0600). A failed transfer leaves the previous bundle
// and credentials as they were and nothing of the new one behind.
#pragma once

#include <memory>
#include <string>

#include "client/bundle_store.h"

namespace grpc {
class Channel;
}

namespace stip {

// How the registry was reached, kept in the credentials so that the client
// can renew its token and fetch a rotated bundle on its own later.
struct RegistryTrust {
  std::string ca_pem;     // "" = system roots
  bool insecure = false;  // plaintext (testing only)
};

struct RegistrationResult {
  Credentials credentials;
  int files = 0;
  uint64_t bytes = 0;
};

RegistrationResult RegisterWithDeveloper(std::shared_ptr<grpc::Channel> channel,
                                         const std::string& developer_address,
                                         const std::string& user,
                                         const std::string& enrolment_token,
                                         const DataDir& data_dir, const RegistryTrust& trust = {});

// Uses the stored credentials' user and access token (and keeps their
// registry trust settings).
RegistrationResult FetchBundleFromDeveloper(std::shared_ptr<grpc::Channel> channel,
                                            const std::string& developer_address,
                                            const DataDir& data_dir);

// Registry.RenewToken with the stored credentials: stores the fresh token
// (credentials.json, 0600, atomically) and returns the new credentials. The
// instance may have changed (a rotation): then the stored instance is still
// the bundle's and `*moved_to` names the new one -- fetch the bundle next.
// Throws stip::Error with the registry's status (UNAUTHENTICATED "expired":
// too late to renew).
Credentials RenewAccessToken(std::shared_ptr<grpc::Channel> channel, const DataDir& data_dir,
                             std::string* moved_to);

}  // namespace stip
