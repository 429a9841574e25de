// A three-party deployment of real processes on loopback for the end-to-end,
// fault, limit and load tests: a demo PKI (deploy/make-demo-ca.sh), stip-server with TLS
// on a store in a temporary directory, stip-developer serving a demo model,
// users registered with stip-client. Everything is removed at the end (kept
// when the test failed, for the logs: DIR/server-N.log, DIR/developer-N.log).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/rpc/tls.h"
#include "common/util/files.h"
#include "tests/process_util.h"
#include "tests/temp_dir.h"
#include "tests/test_util.h"
#include "tests/tls_channel.h"

namespace stip::test {

inline const std::string kBin = STIP_BIN_DIR;
inline const std::string kSrc = STIP_SOURCE_DIR;
inline const std::string kServerBin = kBin + "/server/stip-server";
inline const std::string kDeveloperBin = kBin + "/developer/stip-developer";
inline const std::string kClientBin = kBin + "/client/stip-client";

// The Hugging Face greedy text of a demo model's reference prompt.
inline std::string ReferenceText(const std::string& model) {
  std::ifstream in(ModelDir(model) + "/reference.json");
  return nlohmann::json::parse(in)["greedy_text"].get<std::string>();
}

// The plain engine in one process (tools/stip-generate): prompt + greedy
// continuation, as `stip-client generate` prints it.
inline std::string PlainCompletion(const std::string& model_dir, const std::string& prompt, int n) {
  RunResult r = Run({kBin + "/tools/stip-generate", "--model", model_dir, "--prompt", prompt,
                     "--max-new-tokens", std::to_string(n), "--greedy"},
                    300);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

// Peak resident memory (VmHWM) of a process, bytes (-1 if unknown).
inline int64_t PeakRssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

class Deployment {
 public:
  Deployment() { MakeDemoPki(dir_ + "/pki"); }
  ~Deployment() {
    client_daemons_.clear();
    developer_.reset();
    server_.reset();
    if (::testing::Test::HasFailure()) tmp_.Keep();
  }
  Deployment(const Deployment&) = delete;
  Deployment& operator=(const Deployment&) = delete;

  const std::string& dir() const { return dir_; }
  std::string Pki(const std::string& f) const { return dir_ + "/pki/" + f; }
  std::string store() const { return dir_ + "/store"; }

  // Listens on a free port, or on `listen` (the previous address after a
  // restart: the users' credentials name it). The log is appended to.
  std::string StartServer(const std::vector<std::string>& extra = {},
                          const std::string& listen = "127.0.0.1:0") {
    std::vector<std::string> argv = {
        kServerBin,    "--listen",        listen,        "--store",          store(),
        "--tls-cert",  Pki("server.pem"), "--tls-key",   Pki("server.key"),  "--admin-listen",
        "127.0.0.1:0", "--admin-ca",      Pki("ca.pem"), "--admin-allow-cn", "stip-developer"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    server_ =
        std::make_unique<Daemon>(argv, dir_ + "/server-" + std::to_string(++starts_) + ".log");
    server_address_ = server_->WaitListening();
    admin_address_ = server_->Value("admin on ");
    EXPECT_FALSE(admin_address_.empty());
    return server_address_;
  }
  // Starts it again on the same public address.
  std::string RestartServer(const std::vector<std::string>& extra = {}) {
    const std::string address = server_address_;
    server_.reset();
    return StartServer(extra, address);
  }
  void StopServer() { server_.reset(); }
  // SIGKILL: no shutdown, nothing cleaned up.
  void KillServer() {
    if (server_) server_->Kill9();
  }
  Daemon& server() { return *server_; }
  const std::string& server_address() const { return server_address_; }
  const std::string& admin_address() const { return admin_address_; }

  // TLS toward the server's public port, as a client (the demo CA).
  TlsOptions ClientTls() const {
    TlsOptions t;
    t.ca_file = Pki("ca.pem");
    return t;
  }
  // Mutual TLS toward the admin port, as the developer.
  TlsOptions DeveloperTls() const {
    TlsOptions t;
    t.ca_file = Pki("ca.pem");
    t.cert_file = Pki("developer.pem");
    t.key_file = Pki("developer.key");
    return t;
  }

  std::string AddUser(const std::string& name) {
    RunResult r = Run({kDeveloperBin, "add-user", name, "--state", dir_ + "/developer"}, 60);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::string token = r.out;
    while (!token.empty() && (token.back() == '\n' || token.back() == ' ')) token.pop_back();
    return token;
  }

  // Listens on a free port, or on `listen` (the previous address after a restart).
  std::string StartDeveloper(const std::string& model, const std::vector<std::string>& extra = {},
                             const std::string& listen = "127.0.0.1:0") {
    std::vector<std::string> argv = {kDeveloperBin,
                                     "serve",
                                     "--model",
                                     model,
                                     "--state",
                                     state_dir(),
                                     "--listen",
                                     listen,
                                     "--server",
                                     admin_address_,
                                     "--public-server-address",
                                     server_address_,
                                     "--tls-cert",
                                     Pki("developer.pem"),
                                     "--tls-key",
                                     Pki("developer.key"),
                                     "--tls-ca",
                                     Pki("ca.pem"),
                                     "--access-sync-s",
                                     "0.5"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    developer_ = std::make_unique<Daemon>(
        argv, dir_ + "/developer-" + std::to_string(++developer_starts_) + ".log");
    developer_address_ = developer_->WaitListening(180);
    return developer_address_;
  }
  Daemon& developer() { return *developer_; }
  const std::string& developer_address() const { return developer_address_; }
  std::string state_dir() const { return dir_ + "/developer"; }
  // `stip-client serve` on the user's data dir (plaintext Chat on loopback).
  std::string StartChatDaemon(const std::string& data_dir) {
    client_daemons_.push_back(std::make_unique<Daemon>(
        std::vector<std::string>{kClientBin, "serve", "--data-dir", data_dir, "--listen",
                                 "127.0.0.1:0", "--listen-insecure"},
        dir_ + "/chat-daemon-" + std::to_string(client_daemons_.size()) + ".log"));
    return client_daemons_.back()->WaitListening(120);
  }
  Daemon& chat_daemon(size_t i = 0) { return *client_daemons_.at(i); }
  size_t chat_daemons() const { return client_daemons_.size(); }
  // Every daemon's log so far (server-N, developer-N, chat-daemon-N).
  std::vector<std::string> Logs() const {
    std::vector<std::string> logs;
    for (const std::string& n : ListDirectory(dir_)) {
      if (n.size() > 4 && n.compare(n.size() - 4, 4, ".log") == 0) logs.push_back(dir_ + "/" + n);
    }
    return logs;
  }
  void StopDeveloper() { developer_.reset(); }

  RunResult TryRegister(const std::string& user, const std::string& token,
                        const std::string& data) {
    return Run({kClientBin, "register", "--developer", developer_address_, "--user", user,
                "--token", token, "--data-dir", data, "--ca", Pki("ca.pem")},
               120);
  }
  // Registers `user` with `token`; returns the data directory.
  std::string Register(const std::string& user, const std::string& token) {
    const std::string data = dir_ + "/client-" + user;
    RunResult r = TryRegister(user, token, data);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    return data;
  }
  // Registers `user` with a fresh enrolment token.
  std::string Register(const std::string& user) { return Register(user, AddUser(user)); }

  // A server with `model` stored and loaded, users registered, the developer
  // stopped again (the server keeps the model and its access record).
  std::vector<std::string> Setup(const std::string& model, const std::vector<std::string>& users,
                                 const std::vector<std::string>& server_flags = {}) {
    StartServer(server_flags);
    StartDeveloper(model);
    std::vector<std::string> data;
    for (const std::string& u : users) data.push_back(Register(u));
    StopDeveloper();
    return data;
  }

  // `stip-client generate ... --greedy` plus `extra`.
  static std::vector<std::string> GenerateArgs(const std::string& data_dir,
                                               const std::string& prompt, int n,
                                               const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {kClientBin,         "generate",        "--data-dir",
                                     data_dir,           "--prompt",        prompt,
                                     "--max-new-tokens", std::to_string(n), "--greedy"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }
  static RunResult Generate(const std::string& data_dir, const std::string& prompt, int n = 40,
                            const std::vector<std::string>& extra = {}) {
    return Run(GenerateArgs(data_dir, prompt, n, extra), 300);
  }

 private:
  TempDir tmp_{"stip-deploy"};
  const std::string dir_ = tmp_.path();
  std::string server_address_, admin_address_, developer_address_;
  std::unique_ptr<Daemon> server_, developer_;
  std::vector<std::unique_ptr<Daemon>> client_daemons_;
  int starts_ = 0, developer_starts_ = 0;
};

// A user's credentials (credentials.json in the data directory).
struct UserCredentials {
  std::string instance_id, access_token, server_address;
};
inline UserCredentials LoadUserCredentials(const std::string& data_dir) {
  nlohmann::json j = nlohmann::json::parse(ReadFile(data_dir + "/credentials.json"));
  return {j["instance_id"], j["access_token"], j["server_address"]};
}

}  // namespace stip::test
