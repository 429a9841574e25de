// stip-developer: the model developer's (P1) tool. Offline subcommands:
//   transform  draw (or load) the instance keys and write the server
//              checkpoint and the client bundle, tensor by tensor
//   verify     prove on this model that the STIP path equals the plain model
//   keygen     draw fresh keys for a model into a key file (0600)
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "common/arch/model_config.h"
#include "common/error.h"
#include "common/keys/model_keys.h"
#include "common/transform/transform_checkpoint.h"
#include "common/transform/verify.h"
#include "common/util/files.h"

namespace stip {
namespace {

// Loads the key file if it exists (checking it belongs to this model), else
// draws fresh keys and saves them (0600).
ModelKeys KeysFor(const std::string& model_dir, const std::string& key_file, bool* created) {
  ModelConfig config = LoadModelConfig(model_dir);
  std::string fingerprint = FingerprintModel(model_dir);
  if (PathExists(key_file)) {
    ModelKeys keys = LoadKeys(key_file);
    if (keys.model_fingerprint != fingerprint) {
      throw FailedPrecondition(key_file +
                               ": these keys were made for a different model (fingerprint "
                               "mismatch); refusing to apply them to " +
                               model_dir);
    }
    ValidateKeys(keys, config);
    *created = false;
    return keys;
  }
  ModelKeys keys = GenerateKeys(config, fingerprint);
  SaveKeys(key_file, keys);
  *created = true;
  return keys;
}

int Transform(const std::string& model, const std::string& out, const std::string& key_file,
              double shard_gib, bool quiet) {
  bool created = false;
  ModelKeys keys = KeysFor(model, key_file, &created);
  std::fprintf(stderr, "%s keys for instance %s (%s)\n", created ? "created" : "loaded",
               keys.instance_id.c_str(), key_file.c_str());
  TransformOptions opt;
  opt.max_shard_bytes = shard_gib > 0 ? static_cast<uint64_t>(shard_gib * (1ull << 30)) : 0;
  opt.progress = !quiet;
  TransformStats s = TransformCheckpoint(model, out, keys, opt);
  std::fprintf(stderr,
               "transformed %llu tensors: read %.1f MiB, wrote %.1f MiB in %d shard(s), %.2f s "
               "(%.1f MiB/s) -> %s/server, %s/client\n",
               static_cast<unsigned long long>(s.tensors), s.bytes_read / 1048576.0,
               s.bytes_written / 1048576.0, s.shards, s.seconds,
               s.seconds > 0 ? s.bytes_read / 1048576.0 / s.seconds : 0.0, out.c_str(),
               out.c_str());
  return 0;
}

int Verify(const std::string& model, const VerifyOptions& opt, bool json) {
  VerifyReport r = VerifyModel(model, opt);
  if (json) {
    std::cout << r.ToJson() << std::endl;
  } else {
    std::printf(
        "arch %s: plain vs reference %s, STIP vs plain %.3g (tolerance %.0e), top-1 %.4f, "
        "greedy %s, batch %s -> %s\n",
        r.arch.c_str(),
        r.max_abs_diff_plain_vs_reference
            ? std::to_string(*r.max_abs_diff_plain_vs_reference).c_str()
            : "n/a",
        r.max_abs_diff_stip_vs_plain, r.tolerance, r.top1_agreement,
        r.greedy_match ? (*r.greedy_match ? "match" : "MISMATCH") : "n/a",
        r.greedy_batch_match ? (*r.greedy_batch_match ? "match" : "MISMATCH") : "n/a",
        r.passed ? "PASS" : ("FAIL: " + r.failure).c_str());
  }
  return r.passed ? 0 : 1;
}

}  // namespace
}  // namespace stip

int main(int argc, char** argv) {
  CLI::App app{"stip-developer: transform, verify and deploy a model under STIP"};
  app.require_subcommand(1);

  std::string model, out, keys;
  double shard_gib = 4;
  bool quiet = false;
  auto* transform =
      app.add_subcommand("transform", "write the server checkpoint and client bundle");
  transform->add_option("--model", model, "Hugging Face model directory")->required();
  transform->add_option("--out", out, "output directory (gets server/ and client/)")->required();
  transform->add_option("--keys", keys, "instance key file (created 0600 if missing)")->required();
  transform->add_option("--shard-gib", shard_gib, "max shard size in GiB (0: one file)");
  transform->add_flag("--quiet", quiet, "no progress bar");

  stip::VerifyOptions vopt;
  bool json = false;
  auto* verify = app.add_subcommand("verify", "prove STIP == plain on this model");
  verify->add_option("--model", model, "Hugging Face model directory")->required();
  verify->add_option("--reference", vopt.reference, "reference.safetensors from transformers");
  verify->add_option("--samples", vopt.samples, "random prompts for the Table 5 figures");
  verify->add_option("--tolerance", vopt.tolerance, "max |STIP - plain| (fp32)");
  verify->add_flag("--json", json, "print one JSON object");

  auto* keygen = app.add_subcommand("keygen", "draw fresh instance keys for a model");
  keygen->add_option("--model", model, "Hugging Face model directory")->required();
  keygen->add_option("--keys", keys, "key file to create (0600)")->required();

  CLI11_PARSE(app, argc, argv);
  try {
    if (*transform) return stip::Transform(model, out, keys, shard_gib, quiet);
    if (*verify) return stip::Verify(model, vopt, json);
    if (*keygen) {
      if (stip::PathExists(keys)) {
        throw stip::FailedPrecondition(keys + ": already exists; refusing to overwrite keys");
      }
      bool created = false;
      stip::ModelKeys k = stip::KeysFor(model, keys, &created);
      std::fprintf(stderr, "created keys for instance %s in %s\n", k.instance_id.c_str(),
                   keys.c_str());
      return 0;
    }
  } catch (const stip::Error& e) {
    std::fprintf(stderr, "stip-developer: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stip-developer: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
