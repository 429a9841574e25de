#include "common/transform/verify.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "common/arch/architecture.h"
#include "common/client/client_permuter.h"
#include "common/engine/causal_lm.h"
#include "common/engine/encoder.h"
#include "common/engine/tensor_util.h"
#include "common/error.h"
#include "common/format/safetensors.h"
#include "common/keys/model_keys.h"
#include "common/transform/transform_rules.h"
#include "common/util/files.h"

namespace stip {

namespace {

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

std::vector<int64_t> ToIds(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

struct Reference {
  std::shared_ptr<const SafetensorsFile> file;
  std::optional<at::Tensor> Get(const std::string& name) const {
    if (!file) return std::nullopt;
    const TensorInfo* info = file->Find(name);
    if (!info) return std::nullopt;
    return LoadTensor(TensorRef{info, file->Data(*info), file.get()});
  }
};

// All-position logits of one sequence through the plain model or the STIP path.
at::Tensor Logits(const ClientModel& client, const ServerModel& server,
                  const std::vector<int64_t>& ids, const ModelKeys* keys) {
  KvCache cache = server.NewCache();
  at::Tensor x = client.Embed(ids, 0);
  if (keys) x = PermuteHidden(x, keys->p);
  at::Tensor o = server.Forward({{x, &cache, true}})[0];
  return keys ? UnpermuteLogits(o, keys->p_c) : o;
}

// Encoders: the reference inputs (input_ids or pixel_values) and random ones,
// through the plain server and the STIP path, all in one padded batch; then
// each alone (padding must change nothing).
void VerifyEncoder(const ModelConfig& config, const TensorSource& source, const Reference& ref,
                   const VerifyOptions& options, VerifyReport* r,
                   std::vector<std::string>* failures) {
  LoadOptions load;
  EncoderClient client(config, LoadClientWeights(config, source, load));
  EncoderServer plain(config, LoadServerWeights(config, source, load));
  ModelKeys keys = GenerateKeys(config, "verify");
  std::map<std::string, at::Tensor> transformed = TransformInMemory(config, source, keys);
  ModelConfig tconfig = TransformedConfig(config, keys.instance_id);
  MapSource tsource(transformed, "transformed model");
  EncoderServer stip(tconfig, LoadServerWeights(tconfig, tsource, load));
  transformed.clear();
  const bool images = config.patch_size > 0;
  const EncoderOutput kind = plain.output();

  // 1. The reference inputs, plain vs the reference logits (or hidden states).
  std::vector<at::Tensor> xs;
  size_t reference_rows = 0;
  if (auto in = ref.Get(images ? "pixel_values" : "input_ids")) {
    for (int64_t b = 0; b < in->size(0); ++b) {
      xs.push_back(images ? client.EmbedImage((*in)[b]) : client.EmbedTokens(ToIds((*in)[b])));
    }
    reference_rows = xs.size();
    std::optional<at::Tensor> want = ref.Get(OutputIsLogits(kind) ? "logits" : "last_hidden");
    if (want && kind != EncoderOutput::kPooled) {
      std::vector<at::Tensor> mine = OutputIsLogits(kind) ? plain.Encode(xs) : plain.Hidden(xs);
      double worst = 0, scale = 1;
      for (size_t b = 0; b < mine.size(); ++b) {
        at::Tensor theirs = (*want)[static_cast<int64_t>(b)];
        worst = std::max(worst, MaxAbsDiff(mine[b], theirs));
        scale = std::max(scale, theirs.abs().max().item<double>());
      }
      r->max_abs_diff_plain_vs_reference = worst;
      r->reference_tolerance = options.tolerance * scale;
      if (worst > r->reference_tolerance)
        failures->push_back("plain engine differs from reference");
    }
  }
  // 2. Random inputs of different lengths.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  for (int s = 0; s < options.samples; ++s) {
    if (images) {
      xs.push_back(client.EmbedImage(
          at::rand({config.num_channels, config.image_size, config.image_size}, gen) * 2 - 1));
    } else {
      const int64_t cap =
          std::min<int64_t>(options.sample_length, config.max_positions - config.position_offset);
      const int64_t len = 1 + (s * 7) % std::max<int64_t>(1, cap);
      xs.push_back(
          client.EmbedTokens(ToIds(at::randint(0, config.vocab_size, {len}, gen, at::kLong))));
    }
  }
  r->samples = static_cast<int>(xs.size());
  std::vector<at::Tensor> xs_perm;
  for (const at::Tensor& x : xs) xs_perm.push_back(PermuteHidden(x, keys.p));
  std::vector<at::Tensor> a = plain.Encode(xs), b = stip.Encode(xs_perm);
  int64_t agree = 0;
  bool batch_ok = true;
  for (size_t i = 0; i < xs.size(); ++i) {
    at::Tensor o = UnpermuteLogits(b[i], OutputIsLogits(kind) ? keys.p_c : keys.p);
    at::Tensor pa = a[i].dim() == 1 ? a[i].unsqueeze(0) : a[i];
    at::Tensor po = o.dim() == 1 ? o.unsqueeze(0) : o;
    r->max_abs_diff_stip_vs_plain = std::max(r->max_abs_diff_stip_vs_plain, MaxAbsDiff(pa, po));
    r->max_abs_logit = std::max(r->max_abs_logit, pa.abs().max().item<double>());
    r->sum_abs_diff += (pa.to(at::kDouble) - po.to(at::kDouble)).abs().sum().item<double>();
    agree += pa.argmax(-1).eq(po.argmax(-1)).sum().item<int64_t>();
    r->positions_compared += pa.size(0);
    // Alone (no padding) through the STIP path: the same result.
    at::Tensor alone = stip.Encode({xs_perm[i]})[0];
    batch_ok = batch_ok && alone.sizes() == b[i].sizes() &&
               MaxAbsDiff(alone, b[i]) <= options.tolerance * std::max(1.0, r->max_abs_logit);
  }
  (void)reference_rows;
  r->top1_agreement = r->positions_compared
                          ? static_cast<double>(agree) / static_cast<double>(r->positions_compared)
                          : 0;
  r->encoder_batch_match = batch_ok;
  // Logits of trained models reach ~10: relative to the magnitude, as for the reference.
  const double tol = options.tolerance * std::max(1.0, r->max_abs_logit);
  if (r->max_abs_diff_stip_vs_plain > tol) failures->push_back("STIP differs from plain");
  if (r->top1_agreement != 1.0) failures->push_back("top-1 disagreement");
  if (!batch_ok) failures->push_back("a batched result differs from the same input alone");
}

}  // namespace

std::string VerifyReport::ToJson() const {
  auto opt = [](const auto& v) -> nlohmann::json {
    if (v) return *v;
    return nullptr;
  };
  nlohmann::ordered_json j = {
      {"arch", arch},
      {"model", model_dir},
      {"reference",
       reference.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(reference)},
      {"max_abs_diff_plain_vs_reference", opt(max_abs_diff_plain_vs_reference)},
      {"reference_tolerance", reference_tolerance},
      {"max_abs_diff_stip_vs_plain", max_abs_diff_stip_vs_plain},
      {"tolerance", tolerance},
      {"max_abs_logit", max_abs_logit},
      {"top1_agreement", top1_agreement},
      {"sum_abs_diff", sum_abs_diff},
      {"positions_compared", positions_compared},
      {"samples", samples},
      {"greedy_match", opt(greedy_match)},
      {"greedy_batch_match", opt(greedy_batch_match)},
      {"encoder_output", encoder_output.empty() ? nlohmann::ordered_json(nullptr)
                                                : nlohmann::ordered_json(encoder_output)},
      {"encoder_batch_match", opt(encoder_batch_match)},
      {"seconds", seconds},
      {"passed", passed},
  };
  if (!passed) j["failure"] = failure;
  return j.dump();
}

VerifyReport VerifyModel(const std::string& model_dir, const VerifyOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  VerifyReport r;
  r.model_dir = model_dir;
  r.tolerance = options.tolerance;
  LoadOptions load;  // fp32 on CPU: the comparison is about exactness
  ModelConfig config = LoadModelConfig(model_dir);
  r.arch = config.model_type;
  Checkpoint ckpt = Checkpoint::Open(model_dir);
  CheckpointSource source(ckpt);
  ValidateTensors(config, source, /*server_only=*/false);
  if (config.encoder) {
    Reference ref;
    r.reference = options.reference;
    if (r.reference.empty() && PathExists(JoinPath(model_dir, "reference.safetensors"))) {
      r.reference = JoinPath(model_dir, "reference.safetensors");
    }
    if (!r.reference.empty()) ref.file = SafetensorsFile::Open(r.reference);
    r.encoder_output = EncoderOutputName(EncoderOutputOf(config));
    std::vector<std::string> failures;
    VerifyEncoder(config, source, ref, options, &r, &failures);
    r.passed = failures.empty();
    for (const auto& f : failures) r.failure += (r.failure.empty() ? "" : "; ") + f;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return r;
  }
  ClientModel client(config, LoadClientWeights(config, source, load));
  ServerModel plain(config, LoadServerWeights(config, source, load), load);

  // Fresh keys and the transformed server half, in memory.
  ModelKeys keys = GenerateKeys(config, FingerprintModel(model_dir));
  std::map<std::string, at::Tensor> transformed = TransformInMemory(config, source, keys);
  ModelConfig tconfig = TransformedConfig(config, keys.instance_id);
  MapSource tsource(transformed, "transformed model");
  ServerModel stip(tconfig, LoadServerWeights(tconfig, tsource, load), load);
  transformed.clear();

  Reference ref;
  r.reference = options.reference;
  if (r.reference.empty() && PathExists(JoinPath(model_dir, "reference.safetensors"))) {
    r.reference = JoinPath(model_dir, "reference.safetensors");
  }
  if (!r.reference.empty()) ref.file = SafetensorsFile::Open(r.reference);

  std::vector<std::string> failures;
  // 1. Plain engine vs the reference.
  std::vector<std::vector<int64_t>> prompts;
  if (auto ids = ref.Get("input_ids")) {
    for (int64_t b = 0; b < ids->size(0); ++b) prompts.push_back(ToIds((*ids)[b]));
    if (auto logits = ref.Get("logits")) {
      double worst = 0, scale = 1;
      for (size_t b = 0; b < prompts.size(); ++b) {
        at::Tensor mine = Logits(client, plain, prompts[b], nullptr);
        at::Tensor theirs = (*logits)[static_cast<int64_t>(b)];
        worst = std::max(worst, MaxAbsDiff(mine, theirs));
        scale = std::max(scale, theirs.abs().max().item<double>());
      }
      r.max_abs_diff_plain_vs_reference = worst;
      // A different BLAS sums in another order: scale with the logits' magnitude.
      r.reference_tolerance = options.tolerance * scale;
      if (worst > r.reference_tolerance) failures.push_back("plain engine differs from reference");
    }
  }

  // 2. STIP vs plain: the reference prompts plus random ones (Table 5).
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  std::vector<std::vector<int64_t>> samples = prompts;
  for (int s = 0; s < options.samples; ++s) {
    const int64_t len = std::min<int64_t>(options.sample_length, config.max_positions);
    samples.push_back(ToIds(at::randint(0, config.vocab_size, {len}, gen, at::kLong)));
  }
  r.samples = static_cast<int>(samples.size());
  int64_t agree = 0;
  for (const auto& ids : samples) {
    at::Tensor a = Logits(client, plain, ids, nullptr);
    at::Tensor b = Logits(client, stip, ids, &keys);
    r.max_abs_diff_stip_vs_plain = std::max(r.max_abs_diff_stip_vs_plain, MaxAbsDiff(a, b));
    r.max_abs_logit = std::max(r.max_abs_logit, a.abs().max().item<double>());
    r.sum_abs_diff += (a.to(at::kDouble) - b.to(at::kDouble)).abs().sum().item<double>();
    agree += a.argmax(-1).eq(b.argmax(-1)).sum().item<int64_t>();
    r.positions_compared += a.size(0);
  }
  r.top1_agreement = r.positions_compared
                         ? static_cast<double>(agree) / static_cast<double>(r.positions_compared)
                         : 0;
  if (r.max_abs_diff_stip_vs_plain > options.tolerance)
    failures.push_back("STIP differs from plain");
  if (r.top1_agreement != 1.0) failures.push_back("top-1 disagreement");

  // 3. Greedy generation through the STIP path with the KV cache.
  GreedyOptions g;
  g.eos_ids = config.eos_token_ids;
  g.transform_in = [&](const at::Tensor& x) { return PermuteHidden(x, keys.p); };
  g.transform_out = [&](const at::Tensor& o) { return UnpermuteLogits(o, keys.p_c); };
  if (auto greedy = ref.Get("greedy_ids"); greedy && !prompts.empty()) {
    std::vector<int64_t> want = ToIds(*greedy);
    const size_t plen = want.size() - std::min(want.size(), prompts[0].size());
    g.max_new_tokens = static_cast<int>(plen);
    // The reference prompt is the first input row (or, for the demo models, its prefix).
    std::vector<int64_t> prompt(want.begin(),
                                want.begin() + static_cast<int64_t>(prompts[0].size()));
    r.greedy_match = GreedyGenerate(client, stip, {prompt}, g)[0] == want;
    if (!*r.greedy_match) failures.push_back("greedy generation differs from reference");
  }
  if (auto batch = ref.Get("greedy_ids_batch");
      batch && prompts.size() == static_cast<size_t>(batch->size(0))) {
    g.max_new_tokens = static_cast<int>(batch->size(1) - static_cast<int64_t>(prompts[0].size()));
    auto out = GreedyGenerate(client, stip, prompts, g);
    bool ok = true;
    for (size_t b = 0; b < prompts.size(); ++b)
      ok = ok && out[b] == ToIds((*batch)[static_cast<int64_t>(b)]);
    r.greedy_batch_match = ok;
    if (!ok) failures.push_back("batched greedy generation differs from reference");
  }

  r.passed = failures.empty();
  for (const auto& f : failures) r.failure += (r.failure.empty() ? "" : "; ") + f;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace stip
