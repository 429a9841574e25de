#include "client/bundle_refresh.h"

#include <spdlog/spdlog.h>

#include "client/registration.h"
#include "client/remote_session.h"
#include "common/auth/access_token.h"
#include "common/error.h"
#include "common/rpc/status.h"
#include "common/rpc/tls.h"
#include "common/util/file_lock.h"
#include "common/util/files.h"

namespace stip {

namespace {

std::shared_ptr<grpc::Channel> RegistryChannel(const Credentials& c) {
  TlsOptions tls;
  tls.ca_pem = c.developer_ca_pem;
  tls.insecure = c.developer_insecure;
  return MakeChannel(c.developer, tls, "stip-client");
}

bool IsRetirement(const Error& e) {
  return e.reason() == kReasonInstanceRetired || e.code() == ErrorCode::kNotFound;
}

}  // namespace

ClientConnection::ClientConnection(ConnectSettings settings)
    : settings_(std::move(settings)), dir_(settings_.data_dir) {
  if (settings_.data_dir.empty()) {
    throw InvalidArgument("--data-dir is required to reach a stip server");
  }
  std::lock_guard<std::mutex> lock(mu_);
  credentials_ = dir_.LoadCredentials();
  bundle_ =
      ClientBundle::Load(settings_.bundle_dir.empty() ? dir_.bundle_dir() : settings_.bundle_dir,
                         credentials_.instance_id);
  view_ = MakeViewLocked();
  view_.generation = 1;
}

ClientConnection::View ClientConnection::MakeViewLocked() const {
  const Credentials& c = credentials_;
  TlsOptions tls;
  tls.insecure = settings_.insecure;
  if (!settings_.server_ca.empty()) {
    tls.ca_file = settings_.server_ca;
  } else {
    tls.ca_pem = c.server_ca_pem;
  }
  tls.server_name_override = settings_.server_name;
  const std::string address = settings_.server.empty() ? c.server_address : settings_.server;
  auto channel = MakeChannel(address, tls, "stip-client");
  RemoteSessionOptions o;
  o.address = address;
  o.instance_id = c.instance_id;
  o.access_token = c.access_token;
  o.max_context = settings_.max_context;
  o.logits_format = settings_.logits_format;
  o.expected_hidden = bundle_->hidden_size();
  o.expected_vocab = bundle_->vocab_size();
  o.deadline = settings_.deadline;
  View v;
  v.bundle = bundle_;
  v.make_backend = [channel, o] { return std::make_unique<RemoteSession>(channel, o); };
  v.description = "stip server " + address;
  v.generation = view_.generation;
  return v;
}

ClientConnection::View ClientConnection::Current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return view_;
}

void ClientConnection::ReloadLocked() {
  Credentials fresh = dir_.LoadCredentials();
  const bool moved = fresh.instance_id != bundle_->instance_id();
  if (moved) {
    if (!settings_.bundle_dir.empty()) {
      throw FailedPrecondition("the credentials are for instance " + fresh.instance_id +
                               ", the bundle given with --bundle is of instance " +
                               bundle_->instance_id());
    }
    bundle_ = ClientBundle::Load(dir_.bundle_dir(), fresh.instance_id);
  }
  if (!moved && fresh.access_token == credentials_.access_token) return;
  credentials_ = std::move(fresh);
  const uint64_t next = view_.generation + 1;
  view_ = MakeViewLocked();
  view_.generation = next;
}

void ClientConnection::RenewIfDue() {
  if (!settings_.auto_refresh) return;
  std::lock_guard<std::mutex> lock(mu_);
  std::optional<auth::TokenClaims> claims = auth::ReadClaimsUnverified(credentials_.access_token);
  if (!claims || claims->expires_at <= claims->issued_at) return;  // not ours to judge
  const int64_t now = auth::NowUnix();
  if (now < claims->issued_at + (claims->expires_at - claims->issued_at) / 2) return;
  FileLock file_lock(dir_.refresh_lock_file());
  ReloadLocked();  // another process may have renewed it already
  claims = auth::ReadClaimsUnverified(credentials_.access_token);
  if (!claims || now < claims->issued_at + (claims->expires_at - claims->issued_at) / 2) return;
  const bool expired = now >= claims->expires_at;
  const std::string until = auth::FormatUnixUtc(claims->expires_at);
  const std::string user = credentials_.user.empty() ? "USER" : credentials_.user;
  const std::string what_to_do =
      "a token must be renewed before it expires; ask the developer for a new enrolment token "
      "(stip-developer add-user " +
      user + " --reissue) and register again";
  if (credentials_.developer.empty()) {
    if (expired) {
      throw Error(ErrorCode::kUnauthenticated,
                  "the access token expired at " + until +
                      " and no developer registry is recorded to renew it; " + what_to_do);
    }
    if (!warned_no_registry_) {
      spdlog::warn("the access token expires at {}; no developer registry is recorded to renew it",
                   until);
      warned_no_registry_ = true;
    }
    return;
  }
  try {
    std::string moved_to;
    Credentials renewed = RenewAccessToken(RegistryChannel(credentials_), dir_, &moved_to);
    std::optional<auth::TokenClaims> fresh = auth::ReadClaimsUnverified(renewed.access_token);
    spdlog::info("access token renewed through the registry at {} (valid until {})",
                 renewed.developer, fresh ? auth::FormatUnixUtc(fresh->expires_at) : "?");
    if (!moved_to.empty() && settings_.bundle_dir.empty()) {
      RegistrationResult r =
          FetchBundleFromDeveloper(RegistryChannel(renewed), renewed.developer, dir_);
      spdlog::info("the developer moved this user to instance {}: fetched its bundle",
                   r.credentials.instance_id);
    }
    ReloadLocked();
  } catch (const Error& e) {
    if (expired) {
      throw Error(ErrorCode::kUnauthenticated, "the access token expired at " + until +
                                                   " and could not be renewed (" + e.what() +
                                                   "); " + what_to_do);
    }
    spdlog::warn("cannot renew the access token yet ({}); it stays valid until {}", e.what(),
                 until);
  }
}

bool ClientConnection::Recover(const Error& error, uint64_t generation) {
  if (!settings_.auto_refresh) return false;
  std::lock_guard<std::mutex> lock(mu_);
  if (view_.generation != generation) return true;  // another turn brought it up to date
  const ErrorCode code = error.code();
  if (IsRetirement(error)) {
    if (!settings_.bundle_dir.empty()) return false;
    FileLock file_lock(dir_.refresh_lock_file());
    const std::string old = bundle_->instance_id();
    ReloadLocked();  // another process may have fetched the new bundle already
    if (bundle_->instance_id() != old) return true;
    if (credentials_.developer.empty()) return false;
    try {
      RegistrationResult r =
          FetchBundleFromDeveloper(RegistryChannel(credentials_), credentials_.developer, dir_);
      spdlog::info(
          "model instance {} is {}: fetched the bundle of instance {} from the developer's "
          "registry",
          old,
          error.reason() == kReasonInstanceRetired ? "retired (key rotation)" : "not on the server",
          r.credentials.instance_id);
    } catch (const Error& e) {
      throw Error(e.code(),
                  std::string(error.what()) +
                      "; fetching the current bundle from the developer failed: " + e.what());
    }
    ReloadLocked();
    return bundle_->instance_id() != old;
  }
  if (code == ErrorCode::kPermissionDenied || code == ErrorCode::kUnauthenticated) {
    FileLock file_lock(dir_.refresh_lock_file());
    const uint64_t before = view_.generation;
    ReloadLocked();  // renewed (and so revoked) by another process on this data dir?
    return view_.generation != before;
  }
  return false;
}

void SyncGenerator(ClientConnection& connection, Generator& generator, uint64_t* generation) {
  ClientConnection::View v = connection.Current();
  if (v.generation == *generation) return;
  generator.Rebind(v.bundle, v.make_backend());
  *generation = v.generation;
}

void ConnectWithRefresh(ClientConnection& connection, Generator& generator, uint64_t* generation) {
  connection.RenewIfDue();
  SyncGenerator(connection, generator, generation);
  try {
    generator.Connect();
  } catch (const Error& e) {
    if (!connection.Recover(e, *generation)) throw;
    SyncGenerator(connection, generator, generation);
    generator.Connect();
  }
}

GenerateResult GenerateTurn(ClientConnection& connection, Generator& generator,
                            uint64_t* generation, const std::string& prompt,
                            const GenerateOptions& options, const PieceCallback& on_piece) {
  connection.RenewIfDue();
  SyncGenerator(connection, generator, generation);
  bool shown = false;
  PieceCallback watched = [&](const std::string& piece, const std::vector<int64_t>& ids) {
    if (!piece.empty() || !ids.empty()) shown = true;
    if (on_piece) on_piece(piece, ids);
  };
  try {
    return generator.Generate(prompt, options, watched);
  } catch (const Error& e) {
    // Once part of the answer is out, trying again would repeat it: the error
    // stands, and the next turn starts on the new instance.
    if (shown || !connection.Recover(e, *generation)) throw;
    spdlog::info("trying the turn again on the current instance ({})", e.what());
  }
  SyncGenerator(connection, generator, generation);
  return generator.Generate(prompt, options, watched);
}

}  // namespace stip
