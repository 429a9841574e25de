// Keeping a client usable across the developer's key rotations and token
// lifetimes without the user doing anything (stip-client generate, chat and
// serve all go through here when they talk to a stip server):
//
//  - Token renewal: once half of the access token's lifetime has passed (like
//    DHCP's T1), the next turn first renews it through the developer's
//    Registry (RenewToken, with the stored token -- no enrolment token).
//    A registry that cannot be reached only warns while the token is valid;
//    an expired token cannot be renewed and is reported with what to do.
//  - Rotation: a session refused because its instance is retired
//    (FAILED_PRECONDITION with the reason INSTANCE_RETIRED) or no longer on
//    the server (NOT_FOUND) makes the client fetch the bundle of its current
//    instance (Registry.FetchBundle) and try the turn once more -- if nothing
//    of the answer was shown yet. A conversation continues on the new
//    instance: its whole history is sent again as the new session's prefill.
//  - Several processes on one data directory: renewals and fetches take
//    DIR/.refresh.lock and re-read the credentials first, so that one of them
//    does the work and the others pick up its result; a token refused because
//    another process renewed (and so revoked) it is picked up the same way.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "client/bundle_store.h"
#include "client/generator.h"
#include "client/logits_backend.h"

namespace stip {

struct ConnectSettings {
  std::string data_dir;
  std::string bundle_dir;   // "" = DATA_DIR/bundle (another directory: no bundle fetches)
  std::string server;       // "" = the credentials' server address
  std::string server_ca;    // PEM file; "" = the credentials' CA
  std::string server_name;  // expected name in the server's certificate
  bool insecure = false;    // plaintext toward the stip server
  int64_t max_context = 0;
  LogitsFormat logits_format;  // how sessions get o' back
  bool auto_refresh = true;    // renew tokens and fetch rotated bundles on its own
  // Deadline of every session made (the epoch: none).
  std::chrono::system_clock::time_point deadline{};
};

class ClientConnection {
 public:
  // Loads the credentials and the bundle (throws as DataDir and ClientBundle do).
  explicit ClientConnection(ConnectSettings settings);

  // What sessions use now. `generation` changes whenever the bundle or the
  // token does: a Generator made from an older view must be rebound.
  struct View {
    std::shared_ptr<const ClientBundle> bundle;
    std::function<std::unique_ptr<LogitsBackend>()> make_backend;
    std::string description;
    uint64_t generation = 0;
  };
  View Current() const;

  // Renews the access token if half its lifetime has passed. Throws
  // stip::Error (kUnauthenticated) if it has expired and cannot be renewed.
  void RenewIfDue();

  // After a session of view `generation` failed with `error`: brings the view
  // up to date if that can help (fetches the rotated bundle, or picks up
  // credentials another process renewed). True if the turn should be tried
  // again on the new view. Throws if the fetch fails.
  bool Recover(const Error& error, uint64_t generation);

 private:
  View MakeViewLocked() const;  // from credentials_ and bundle_
  void ReloadLocked();          // credentials from disk; the bundle if its instance changed

  const ConnectSettings settings_;
  const DataDir dir_;
  mutable std::mutex mu_;
  Credentials credentials_;
  std::shared_ptr<const ClientBundle> bundle_;
  View view_;
  bool warned_no_registry_ = false;
};

// Binds `generator` to the connection's current view if `*generation` is
// older (the generator's conversation is then sent again on its next turn).
void SyncGenerator(ClientConnection& connection, Generator& generator, uint64_t* generation);

// Opens the generator's session now (Generator::Connect), renewing the token
// and following a rotation first if needed.
void ConnectWithRefresh(ClientConnection& connection, Generator& generator, uint64_t* generation);

// One turn (Generator::Generate) that survives token expiry and key rotation
// as described above. `*generation`: the view the generator is bound to.
GenerateResult GenerateTurn(ClientConnection& connection, Generator& generator,
                            uint64_t* generation, const std::string& prompt,
                            const GenerateOptions& options, const PieceCallback& on_piece = {});

}  // namespace stip
