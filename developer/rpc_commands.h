// The gRPC subcommands of stip-developer: `push` and `serve`.
#pragma once

#include <string>
#include <vector>

#include "common/rpc/tls.h"

namespace stip {

struct PushCommand {
  std::string model_dir;    // transformed server directory
  std::string instance_id;  // "" = from model_dir/config.json
  std::string server;       // HOST:PORT
  bool load = true;
  TlsOptions tls;         // ca_file verifies the server; cert/key for mutual TLS
  std::string state_dir;  // "" = register no token key; else the state's key and revocations
};

// Prints one summary line on stdout; returns the exit status.
int RunPush(const PushCommand& cmd);

struct ServeCommand {
  std::string model_dir;
  std::string state_dir;
  std::string listen;
  std::vector<std::string> servers;
  std::string public_server_address;
  std::string tls_cert, tls_key, tls_ca, tls_server_name;
  bool insecure = false;
  double push_timeout_s = 60;
  double shard_gib = 4;
  double token_ttl_hours = 720;  // lifetime of the access tokens the Registry issues
  double access_sync_s = 10;     // how often revocations are pushed to the servers
  std::string metrics_listen;    // HOST:PORT for Prometheus /metrics ("": none)
};

// Runs until SIGTERM/SIGINT; prints "stip-developer listening on HOST:PORT"
// on stdout once the Registry serves. Returns the exit status.
int RunServe(const ServeCommand& cmd);

// "HOST:PORT" with the port replaced (the port a ":0" listen bound).
std::string WithPort(const std::string& address, int port);

}  // namespace stip
