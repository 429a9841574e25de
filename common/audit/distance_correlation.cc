#include "common/audit/distance_correlation.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "common/error.h"
#include "common/transform/transform_rules.h"

namespace stip {

namespace {

// Rows of the distance matrix computed at a time: blocks of about 2^20 entries.
int64_t BlockRows(int64_t n) { return std::max<int64_t>(1, (int64_t{1} << 20) / n); }

at::Tensor AsSamples(const at::Tensor& x) {
  at::Tensor s = x.to(at::kFloat).contiguous();
  return s.dim() == 1 ? s.unsqueeze(1) : s;
}

// Distances from the samples rows [begin, begin + n) to all samples.
at::Tensor DistanceBlock(const at::Tensor& s, int64_t begin, int64_t n) {
  at::Tensor part = s.narrow(0, begin, n);
  if (s.size(1) == 1) return (part - s.t()).abs_();
  return at::cdist(part, s);
}

at::Tensor LinearLayout(const at::Tensor& w, Layout layout) {
  return layout == Layout::kConv1D ? w.t().contiguous() : w;
}

double Mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

// Random linear projection with entries N(0, 1/n): the paper's baseline.
at::Tensor Projection(int64_t n, at::Generator& gen) {
  return at::randn({n, n}, gen, at::kFloat) / std::sqrt(static_cast<double>(n));
}

struct PerVector {
  std::vector<double> stip, projection, unrelated;
};

// One vector x [d], its STIP image, its projection, an unrelated vector.
void AddPerVector(PerVector* acc, const at::Tensor& x, const at::Tensor& x_prime,
                  const at::Tensor& projection, const at::Tensor& unrelated) {
  acc->stip.push_back(DistanceCorrelation(x, x_prime));
  acc->projection.push_back(DistanceCorrelation(x, at::matmul(x, projection)));
  acc->unrelated.push_back(DistanceCorrelation(x, unrelated));
}

}  // namespace

double DistanceCorrelation(const at::Tensor& x, const at::Tensor& y) {
  if (x.dim() < 1 || x.dim() > 2 || y.dim() < 1 || y.dim() > 2) {
    throw InvalidArgument("distance correlation: samples must be vectors or matrices");
  }
  if (x.size(0) != y.size(0)) {
    throw InvalidArgument("distance correlation: " + std::to_string(x.size(0)) + " vs " +
                          std::to_string(y.size(0)) + " samples");
  }
  if (x.size(0) < 2) throw InvalidArgument("distance correlation: needs at least 2 samples");
  // V-statistic of Szekely et al. with distance matrices a, b, their row
  // means r and grand means g: for the double-centred A, B
  //   n^2 dCov^2 = sum A.B = sum a.b - 2n sum_i ra_i rb_i + n^2 ga gb
  // (likewise for dVar^2), so one pass over blocks of rows gives everything
  // and no n x n matrix is ever held.
  const at::Tensor sx = AsSamples(x), sy = AsSamples(y);
  const int64_t n = sx.size(0);
  const int64_t block = BlockRows(n);
  double ab = 0, aa = 0, bb = 0;
  std::vector<at::Tensor> rxs, rys;
  for (int64_t b = 0; b < n; b += block) {
    const int64_t m = std::min(block, n - b);
    at::Tensor a = DistanceBlock(sx, b, m), c = DistanceBlock(sy, b, m);
    rxs.push_back(a.sum(1, false, at::kDouble));
    rys.push_back(c.sum(1, false, at::kDouble));
    ab += (a * c).sum(at::kDouble).item<double>();
    aa += a.square().sum(at::kDouble).item<double>();
    bb += c.square().sum(at::kDouble).item<double>();
  }
  const double dn = static_cast<double>(n);
  const at::Tensor rx = at::cat(rxs, 0) / dn, ry = at::cat(rys, 0) / dn;
  const double gx = rx.mean().item<double>(), gy = ry.mean().item<double>();
  auto centred = [&](double s, const at::Tensor& r1, const at::Tensor& r2, double g1, double g2) {
    return s - 2 * dn * (r1 * r2).sum().item<double>() + dn * dn * g1 * g2;
  };
  const double cov = centred(ab, rx, ry, gx, gy);
  const double vx = centred(aa, rx, rx, gx, gx), vy = centred(bb, ry, ry, gy, gy);
  if (vx <= 1e-12 * aa || vy <= 1e-12 * bb) return 0;  // a constant sample: nothing to measure
  return std::sqrt(std::max(0.0, cov) / std::sqrt(vx * vy));
}

nlohmann::ordered_json AuditDistanceCorrelation(const AuditSubject& subject, const ServerView& view,
                                                const DistanceCorrelationOptions& options) {
  using json = nlohmann::ordered_json;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  const ModelConfig& config = subject.config;

  // Fig. 6a: every server tensor against its plaintext source, per row (the
  // entries of row i of W against those of row i of W'); vectors as one row.
  json params = json::array();
  PerVector all_rows;
  for (const TransformedTensor& t : PlanServerTensors(config)) {
    at::Tensor w =
        LinearLayout(subject.plain.at(SourceTensorName(t, config, subject.keys)), t.layout);
    at::Tensor w_prime = LinearLayout(view.weights.at(t.name), t.layout);
    if (w.dim() == 1) {
      w = w.unsqueeze(0);
      w_prime = w_prime.unsqueeze(0);
    }
    const int64_t rows = std::min<int64_t>(w.size(0), options.rows_per_tensor);
    at::Tensor pick = at::randperm(w.size(0), gen, at::kLong).narrow(0, 0, rows);
    at::Tensor projection = Projection(w.size(1), gen);
    PerVector pv;
    for (int64_t k = 0; k < rows; ++k) {
      const int64_t i = pick[k].item<int64_t>();
      // Unrelated: another row of the same tensor (for a vector: fresh noise).
      at::Tensor other = w.size(0) > 1 ? w[(i + 1) % w.size(0)] : at::randn_like(w[i]);
      AddPerVector(&pv, w[i], w_prime[i], projection, other);
    }
    params.push_back({{"tensor", t.name},
                      {"role", RoleName(t.role)},
                      {"rows", rows},
                      {"stip", Mean(pv.stip)},
                      {"random_projection", Mean(pv.projection)},
                      {"unrelated_row", Mean(pv.unrelated)}});
    all_rows.stip.push_back(Mean(pv.stip));
    all_rows.projection.push_back(Mean(pv.projection));
    all_rows.unrelated.push_back(Mean(pv.unrelated));
  }

  // Fig. 6b on this model: the embeddings the prompts produced, against x'.
  std::vector<at::Tensor> xs, xps;
  std::vector<int64_t> ids;
  for (const ObservedGeneration& g : view.generations) {
    xs.push_back(g.x);
    xps.push_back(g.x_prime);
    ids.insert(ids.end(), g.ids.begin(), g.ids.begin() + g.x.size(0));
  }
  at::Tensor x = at::cat(xs, 0), x_prime = at::cat(xps, 0);
  const int64_t d = x.size(1);
  at::Tensor projection = Projection(d, gen);
  const at::Tensor& table = subject.plain.at(TensorName(config, Role::kTokenEmbedding));
  PerVector model_pv;
  const int64_t n_vec = std::min<int64_t>(x.size(0), 64);
  for (int64_t i = 0; i < n_vec; ++i) {
    // An unrelated vector: the embedding of another token.
    int64_t other = (ids[static_cast<size_t>(i)] + 1 + i * 7919) % config.vocab_size;
    AddPerVector(&model_pv, x[i], x_prime[i], projection, table[other]);
  }
  json embeddings = {
      {"hidden_size", d},
      {"tokens", x.size(0)},
      {"per_vector",
       {{"vectors", n_vec},
        {"stip", Mean(model_pv.stip)},
        {"random_projection", Mean(model_pv.projection)},
        {"unrelated_vector", Mean(model_pv.unrelated)}}},
      {"across_tokens",
       {{"stip", DistanceCorrelation(x, x_prime)},
        {"random_projection", DistanceCorrelation(x, at::matmul(x, projection))}}},
  };

  // Fig. 6b's sweep over hidden sizes, on synthetic N(0, 1) embeddings (the
  // permutation is drawn here too: only its size matters).
  json sweep = json::array();
  for (int64_t h : options.hidden_sizes) {
    at::Tensor proj = Projection(h, gen);
    PerVector pv;
    // Fewer vectors at large sizes, where dCor varies little between vectors.
    const int64_t n_vectors =
        std::clamp<int64_t>(options.vectors_per_size * 1024 / h, 2, options.vectors_per_size);
    for (int64_t i = 0; i < n_vectors; ++i) {
      at::Tensor v = at::randn({h}, gen, at::kFloat);
      at::Tensor perm = at::randperm(h, gen, at::kLong);
      AddPerVector(&pv, v, v.index_select(0, perm), proj, at::randn({h}, gen, at::kFloat));
    }
    at::Tensor xt = at::randn({options.tokens_per_size, h}, gen, at::kFloat);
    at::Tensor perm = at::randperm(h, gen, at::kLong);
    sweep.push_back(
        {{"hidden_size", h},
         {"per_vector_stip", Mean(pv.stip)},
         {"per_vector_random_projection", Mean(pv.projection)},
         {"per_vector_unrelated", Mean(pv.unrelated)},
         {"across_tokens_stip", DistanceCorrelation(xt, xt.index_select(1, perm))},
         {"across_tokens_random_projection", DistanceCorrelation(xt, at::matmul(xt, proj))}});
  }

  return {
      {"attacker_knowledge",
       "none needed: a statistic of the transformed data against the plaintext (the paper's "
       "Fig. 6), computed by the developer who holds both"},
      {"parameters",
       {{"pairing", "per row: entries of a row of W against the same row of W'"},
        {"mean_stip", Mean(all_rows.stip)},
        {"mean_random_projection", Mean(all_rows.projection)},
        {"mean_unrelated_row", Mean(all_rows.unrelated)},
        {"tensors", params}}},
      {"embeddings", embeddings},
      {"finding",
       "measured with one pairing, STIP and a random projection agree: per vector both are at "
       "the level of an unrelated vector (the paper's STIP curve, reproduced), across tokens "
       "STIP is exactly 1 and the projection close to it. The paper compares STIP per vector "
       "with a projection measured otherwise."},
      {"hidden_size_sweep", sweep},
  };
}

}  // namespace stip
