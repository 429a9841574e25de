#include "common/audit/audit.h"

#include <c10/core/InferenceMode.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>

#include "common/audit/decoding_codebook.h"
#include "common/audit/key_space.h"
#include "common/audit/keyless_generation.h"
#include "common/audit/known_plaintext.h"
#include "common/audit/server_view.h"
#include "common/audit/vocabulary_matching.h"
#include "common/engine/causal_lm.h"
#include "common/engine/cpu_runtime.h"
#include "common/error.h"
#include "common/tokenizer/tokenizer.h"
#include "common/util/files.h"

namespace stip {

namespace {

using Clock = std::chrono::steady_clock;

// Steps on stderr: a bar on a terminal, plain lines otherwise.
class AuditProgress {
 public:
  AuditProgress(int steps, bool enabled)
      : steps_(steps), on_(enabled), tty_(isatty(STDERR_FILENO)) {}
  void Step(const std::string& what) {
    if (!on_) return;
    const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
    if (tty_) {
      const int width = 28;
      const int fill = done_ * width / steps_;
      std::string bar(static_cast<size_t>(fill), '=');
      if (fill < width) bar += '>';
      bar.resize(width, ' ');
      std::fprintf(stderr, "\r\033[Kaudit [%s] %d/%d %5.1fs %s", bar.c_str(), done_, steps_, secs,
                   what.c_str());
    } else {
      std::fprintf(stderr, "audit: [%d/%d] %.1fs %s\n", done_ + 1, steps_, secs, what.c_str());
    }
    std::fflush(stderr);
    done_++;
  }
  void Done() {
    if (!on_) return;
    const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
    if (tty_) {
      std::fprintf(stderr, "\r\033[Kaudit [%s] %d/%d %5.1fs done\n", std::string(28, '=').c_str(),
                   steps_, steps_, secs);
    } else {
      std::fprintf(stderr, "audit: done in %.1fs\n", secs);
    }
  }

 private:
  int steps_, done_ = 0;
  bool on_, tty_;
  Clock::time_point start_ = Clock::now();
};

}  // namespace

std::vector<std::string> DefaultAuditPrompts() {
  return {
      "In the beginning God created the heaven and the earth.",
      "And God said, Let there be light: and there was light.",
      "The LORD is my shepherd; I shall not want.",
      "Blessed are the meek: for they shall inherit the earth.",
      "And it came to pass in those days, that there went out a decree",
      "Honour thy father and thy mother: that thy days may be long upon the land",
      "For God so loved the world, that he gave his only begotten Son,",
      "Then Jesus answered and said unto them,",
  };
}

std::vector<std::string> LoadAuditPrompts(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw NotFound(path + ": cannot read the prompts file");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") != std::string::npos) out.push_back(line);
  }
  if (out.empty()) throw InvalidArgument(path + ": no prompts (one per non-empty line)");
  return out;
}

nlohmann::ordered_json RunAudit(const AuditOptions& options, ModelKeys keys) {
  using json = nlohmann::ordered_json;
  ConfigureCpuRuntime();  // threads and OpenBLAS kernels, as the server and stip-bench
  c10::InferenceMode inference_mode;
  const auto start = Clock::now();
  AuditProgress progress(9, options.progress);

  progress.Step("loading the model");
  AuditSubject subject = LoadAuditSubject(options.model_dir, std::move(keys));
  if (!options.base_weights.base_dir.empty()) {
    CheckBaseModel(subject.config, options.base_weights.base_dir);
  }
  std::unique_ptr<Tokenizer> tokenizer = Tokenizer::FromDirectory(options.model_dir);
  const std::vector<std::string> texts =
      options.prompts.empty() ? DefaultAuditPrompts() : options.prompts;
  std::vector<std::vector<int64_t>> prompts;
  for (const std::string& t : texts) {
    std::vector<int64_t> ids = tokenizer->Encode(t);
    if (ids.empty()) throw InvalidArgument("audit: a prompt encodes to no tokens");
    if (static_cast<int64_t>(ids.size()) + options.max_new_tokens > subject.config.max_positions) {
      throw InvalidArgument("audit: a prompt of " + std::to_string(ids.size()) + " tokens plus " +
                            std::to_string(options.max_new_tokens) +
                            " new tokens exceeds the model's " +
                            std::to_string(subject.config.max_positions) + " positions");
    }
    prompts.push_back(std::move(ids));
  }

  progress.Step("server's view: transform and generate");
  ServerView view = MakeServerView(subject, prompts, options.max_new_tokens);
  int64_t prompt_tokens = 0, generated = 0;
  for (const auto& g : view.generations) {
    prompt_tokens += static_cast<int64_t>(g.prompt.size());
    generated += static_cast<int64_t>(g.ids.size() - g.prompt.size());
  }

  json result;
  result["model"] = options.model_dir;
  result["arch"] = subject.config.model_type;
  result["config"] = {{"hidden_size", subject.config.hidden_size},
                      {"vocab_size", subject.config.vocab_size},
                      {"layers", subject.config.num_layers},
                      {"heads", subject.config.num_heads},
                      {"kv_heads", subject.config.num_kv_heads},
                      {"head_dim", subject.config.head_dim},
                      {"intermediate_size", subject.config.intermediate_size},
                      {"rope", subject.config.positions == PositionKind::kRope},
                      {"tied_head", subject.config.tie_word_embeddings}};
  result["keys"] = options.keys_origin;
  result["server_view"] = {
      {"how",
       "simulated in-process: the engine runs the transformed weights on x' = x[..., p] and "
       "returns o' -- the bytes a stip-server receives and sends for these prompts (greedy "
       "decoding)"},
      {"prompts", static_cast<int64_t>(prompts.size())},
      {"prompt_tokens", prompt_tokens},
      {"generated_tokens", generated},
      {"max_new_tokens", options.max_new_tokens}};

  progress.Step("1 distance correlation");
  result["distance_correlation"] =
      AuditDistanceCorrelation(subject, view, options.distance_correlation);
  progress.Step("2 key space");
  result["key_space"] = KeySpaceJson(MeasureKeySpace(subject.config));
  progress.Step("3 known plaintext");
  result["known_plaintext"] = AuditKnownPlaintext(subject, view);
  progress.Step("4 vocabulary matching");
  std::vector<std::vector<int64_t>> decoded = MatchVocabulary(subject, view);
  result["vocabulary_matching"] = AuditVocabularyMatching(subject, view, decoded);
  progress.Step("5 base-weight matching");
  result["base_weight_matching"] = AuditBaseWeightMatching(subject, view, options.base_weights);
  progress.Step("6 decoding codebook");
  result["decoding_codebook"] = AuditDecodingCodebook(subject, view, decoded);
  progress.Step("7 keyless generation (Table 4)");
  result["keyless_generation"] =
      AuditKeylessGeneration(subject, view, options.max_new_tokens, tokenizer.get());
  progress.Done();
  result["seconds"] = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace stip
