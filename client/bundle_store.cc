#include "client/bundle_store.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "client/encoder_tasks.h"
#include "common/arch/model_config.h"
#include "common/chat/chat_template.h"
#include "common/engine/causal_lm.h"
#include "common/error.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/files.h"

namespace stip {

namespace {

constexpr const char* kCredentialsFormat = "stip-client-credentials-v1";

std::string Field(const nlohmann::json& j, const char* key, const std::string& source,
                  bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) throw InvalidArgument(source + ": missing \"" + key + "\"");
    return "";
  }
  if (!it->is_string()) throw InvalidArgument(source + ": \"" + key + "\" must be a string");
  return it->get<std::string>();
}

// EOS ids from config.json (already parsed) and generation_config.json.
std::vector<int64_t> EosIds(const ModelConfig& config, const GenerationConfig& gen) {
  std::vector<int64_t> ids = config.eos_token_ids;
  for (int64_t id : gen.eos_token_ids) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  return ids;
}

void CheckKeys(const ClientKeys& keys, const ModelConfig& config, const std::string& dir,
               const std::string& expected_instance) {
  if (!IsPermutation(keys.p, config.hidden_size)) {
    throw InvalidArgument(dir + ": client key p is not a permutation of the hidden size " +
                          std::to_string(config.hidden_size));
  }
  if (!IsPermutation(keys.p_c, config.vocab_size)) {
    throw InvalidArgument(dir + ": client key p_c is not a permutation of the vocabulary size " +
                          std::to_string(config.vocab_size));
  }
  if (!config.stip_instance.empty() && config.stip_instance != keys.instance_id) {
    throw InvalidArgument(dir + ": config.json names instance " + config.stip_instance +
                          " but the client keys belong to instance " + keys.instance_id);
  }
  if (!expected_instance.empty() && expected_instance != keys.instance_id) {
    throw FailedPrecondition(dir + ": the bundle belongs to instance " + keys.instance_id +
                             ", the credentials to instance " + expected_instance +
                             " (register again)");
  }
}

}  // namespace

// ---- credentials ----------------------------------------------------------------

std::string Credentials::ToJson() const {
  nlohmann::json j = {{"format", kCredentialsFormat},
                      {"user", user},
                      {"instance_id", instance_id},
                      {"server_address", server_address},
                      {"access_token", access_token},
                      {"server_ca_pem", server_ca_pem},
                      {"developer", developer},
                      {"developer_ca_pem", developer_ca_pem},
                      {"developer_insecure", developer_insecure}};
  return j.dump(2) + "\n";
}

Credentials Credentials::FromJson(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    throw InvalidArgument(source + ": not valid JSON");  // no excerpt: the file holds a secret
  }
  if (!j.is_object()) throw InvalidArgument(source + ": not a JSON object");
  const std::string format = Field(j, "format", source, false);
  if (!format.empty() && format != kCredentialsFormat) {
    throw InvalidArgument(source + ": unknown format (expected " + kCredentialsFormat + ")");
  }
  Credentials c;
  c.user = Field(j, "user", source, false);
  c.instance_id = Field(j, "instance_id", source, true);
  c.server_address = Field(j, "server_address", source, true);
  c.access_token = Field(j, "access_token", source, true);
  c.server_ca_pem = Field(j, "server_ca_pem", source, false);
  c.developer = Field(j, "developer", source, false);
  c.developer_ca_pem = Field(j, "developer_ca_pem", source, false);
  if (auto it = j.find("developer_insecure"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      throw InvalidArgument(source + ": \"developer_insecure\" must be true or false");
    }
    c.developer_insecure = it->get<bool>();
  }
  if (c.instance_id.empty()) throw InvalidArgument(source + ": empty \"instance_id\"");
  return c;
}

// ---- data directory ---------------------------------------------------------------

std::string DataDir::bundle_dir() const { return JoinPath(dir_, "bundle"); }
std::string DataDir::credentials_file() const { return JoinPath(dir_, "credentials.json"); }
std::string DataDir::refresh_lock_file() const { return JoinPath(dir_, ".refresh.lock"); }

void DataDir::SaveCredentials(const Credentials& credentials) const {
  WriteFileAtomic(credentials_file(), credentials.ToJson(), 0600);
  SyncDirectory(dir_);
}

void DataDir::EnsureExists() const { MakeDirectories(dir_, 0700); }

Credentials DataDir::LoadCredentials() const {
  const std::string file = credentials_file();
  if (!PathExists(file) || !IsDirectory(bundle_dir())) {
    if (IsDirectory(bundle_dir() + ".old")) {
      throw FailedPrecondition(dir_ +
                               ": an interrupted re-registration left bundle.old behind; run "
                               "`stip-client register` again");
    }
    throw NotFound(dir_ +
                   ": not registered (no credentials.json or bundle/); run `stip-client "
                   "register --data-dir " +
                   dir_ + " ...` first");
  }
  return Credentials::FromJson(ReadFile(file), file);
}

void DataDir::Install(const std::string& new_bundle, const Credentials& credentials) const {
  const std::string bundle = bundle_dir();
  const std::string old = bundle + ".old";
  RemoveAll(old);
  if (PathExists(bundle)) RenamePath(bundle, old);
  RenamePath(new_bundle, bundle);
  WriteFileAtomic(credentials_file(), credentials.ToJson(), 0600);
  SyncDirectory(dir_);
  RemoveAll(old);
}

// ---- the loaded bundle --------------------------------------------------------------

ClientBundle::~ClientBundle() = default;

void ClientBundle::Check(const std::string& dir, const std::string& expected_instance) {
  ModelConfig config = LoadModelConfig(dir);
  if (config.encoder) {  // BERT, ViT: client/encoder_tasks.h
    EncoderBundle::Load(dir, expected_instance);
    return;
  }
  ClientKeys keys = LoadClientKeys(JoinPath(dir, "client_keys.safetensors"));
  CheckKeys(keys, config, dir, expected_instance);
  if (!PathExists(JoinPath(dir, "model.safetensors"))) {
    throw NotFound(dir + ": the bundle has no model.safetensors (embedding tensors)");
  }
  auto tok = Tokenizer::FromDirectory(dir);
  if (tok->vocab_size() > config.vocab_size) {
    throw InvalidArgument(dir + ": the tokenizer has " + std::to_string(tok->vocab_size()) +
                          " tokens, more than the model's vocabulary of " +
                          std::to_string(config.vocab_size));
  }
}

std::shared_ptr<const ClientBundle> ClientBundle::Load(const std::string& dir,
                                                       const std::string& expected_instance) {
  std::shared_ptr<ClientBundle> b(new ClientBundle());
  b->dir_ = dir;
  b->model_ = ClientModel::Load(dir);
  const ModelConfig& config = b->model_->config();
  b->keys_ = LoadClientKeys(JoinPath(dir, "client_keys.safetensors"));
  CheckKeys(b->keys_, config, dir, expected_instance);
  b->tokenizer_ = Tokenizer::FromDirectory(dir);
  if (b->tokenizer_->vocab_size() > config.vocab_size) {
    throw InvalidArgument(
        dir + ": the tokenizer has " + std::to_string(b->tokenizer_->vocab_size()) +
        " tokens, more than the model's vocabulary of " + std::to_string(config.vocab_size));
  }
  b->generation_config_ = LoadGenerationConfig(dir);
  b->eos_ids_ = EosIds(config, b->generation_config_);
  try {
    b->chat_template_ = ChatTemplate::FromDirectory(dir);
  } catch (const Error& e) {
    b->chat_template_error_ = e.what();
  }
  return b;
}

const ChatTemplate* ClientBundle::chat_template() const {
  if (!chat_template_error_.empty()) throw InvalidArgument(chat_template_error_);
  return chat_template_.get();
}

int64_t ClientBundle::hidden_size() const { return model_->config().hidden_size; }
int64_t ClientBundle::vocab_size() const { return model_->config().vocab_size; }
int64_t ClientBundle::max_positions() const { return model_->config().max_positions; }

}  // namespace stip
