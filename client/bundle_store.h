// The client's data directory (`stip-client register --data-dir DIR`):
//
//   DIR/                    0700
//   DIR/bundle/             0700, the client bundle from the developer: config.json,
//                           generation_config.json, model.safetensors (embedding
//                           tensors), client_keys.safetensors (p, p_c), tokenizer
//                           files and the chat template (tokenizer_config.json,
//                           chat_template.jinja); every file 0600
//   DIR/credentials.json    0600: user, instance id, stip server address, access
//                           token, the CA that signs the server's certificate, and
//                           how to reach the developer's registry again (address,
//                           its CA) to renew the token and fetch a rotated bundle
//   DIR/.refresh.lock       flock: one renewal or bundle fetch at a time
//                           (bundle_refresh.h)
//
// and the loaded bundle (tokenizer, embedding half of the model, p and p_c),
// checked for consistency. Nothing here logs or prints the access token or
// any key material. Torch-free header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/chat/generation_config.h"
#include "common/keys/model_keys.h"

namespace stip {

class ChatTemplate;
class ClientModel;
class Tokenizer;

// What the developer's Registry hands a user besides the bundle's files.
struct Credentials {
  std::string user;
  std::string instance_id;
  std::string server_address;       // host:port of the stip server
  std::string access_token;         // secret
  std::string server_ca_pem;        // "" = system roots
  std::string developer;            // host:port of the developer's registry (for fetch)
  std::string developer_ca_pem;     // CA of the registry's certificate ("" = system roots)
  bool developer_insecure = false;  // the registry was reached without TLS (testing only)

  std::string ToJson() const;
  // Throws kInvalidArgument naming the field (never its value) if malformed.
  static Credentials FromJson(const std::string& text, const std::string& source);
};

class DataDir {
 public:
  explicit DataDir(std::string dir) : dir_(std::move(dir)) {}
  const std::string& path() const { return dir_; }
  std::string bundle_dir() const;
  std::string credentials_file() const;
  std::string refresh_lock_file() const;
  // Replaces the credentials (0600, atomically), e.g. with a renewed token.
  void SaveCredentials(const Credentials& credentials) const;

  // Throws kNotFound ("not registered: run stip-client register ...") if missing.
  Credentials LoadCredentials() const;
  // Creates DIR (0700) if needed.
  void EnsureExists() const;
  // Replaces the bundle with the complete, verified directory `new_bundle`
  // (a sibling of bundle_dir()) and writes the credentials (0600, atomically).
  // The previous bundle stays in place until the new one is complete; a crash
  // between the two renames leaves DIR/bundle.old, which the next
  // LoadCredentials reports.
  void Install(const std::string& new_bundle, const Credentials& credentials) const;

 private:
  std::string dir_;
};

// The loaded bundle, shared (read-only) by every session of this client.
class ClientBundle {
 public:
  ~ClientBundle();
  // Loads and cross-checks: config.json, the embedding tensors, the client
  // keys (sizes against the config; the instance id against config.json's
  // stip record and `expected_instance` when given), the tokenizer, the EOS
  // ids (config.json and generation_config.json).
  static std::shared_ptr<const ClientBundle> Load(const std::string& dir,
                                                  const std::string& expected_instance = "");
  // The cheap part of Load (config, keys, tokenizer files present): used to
  // check a freshly received bundle before it replaces the previous one.
  static void Check(const std::string& dir, const std::string& expected_instance);

  const std::string& dir() const { return dir_; }
  const ClientModel& model() const { return *model_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ClientKeys& keys() const { return keys_; }
  const std::string& instance_id() const { return keys_.instance_id; }
  const std::vector<int64_t>& eos_ids() const { return eos_ids_; }
  // generation_config.json (empty if the bundle has none).
  const GenerationConfig& generation_config() const { return generation_config_; }
  // The chat template (common/chat/chat_template.h), nullptr if the bundle
  // has none. A malformed template does not stop the bundle from loading
  // (plain completions need none); using it throws the error naming the
  // file and line.
  const ChatTemplate* chat_template() const;
  int64_t hidden_size() const;
  int64_t vocab_size() const;
  int64_t max_positions() const;  // 0: unknown

 private:
  ClientBundle() = default;
  std::string dir_;
  std::unique_ptr<ClientModel> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ClientKeys keys_;
  std::vector<int64_t> eos_ids_;
  GenerationConfig generation_config_;
  std::shared_ptr<const ChatTemplate> chat_template_;
  std::string chat_template_error_;
};

}  // namespace stip
