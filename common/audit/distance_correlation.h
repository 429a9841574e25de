// Attack 1 / the paper's Fig. 6: distance correlation (Székely, Rizzo and
// Bakirov 2007) between plaintext and transformed data, against a random
// linear projection baseline.
//
// Two ways of pairing samples are reported, because they answer different
// questions:
//  - per vector ("features as samples", the paper's Fig. 6b reading): the d
//    entries of one embedding x and the d entries of x' = x[p] are d paired
//    scalar samples. The permutation breaks the pairing, so the figure is
//    the small-sample bias of dCor for n = d -- about the same for an
//    unrelated vector, which is reported beside it.
//  - across tokens ("tokens as samples", what the bound of the paper's §5.3
//    and split-learning work measure): rows of X [T, d] paired with rows of
//    X' [T, d]. A permutation keeps every distance between tokens, so this is
//    exactly 1: the attacks that follow exploit that structure.
// For parameters (Fig. 6a) the pairing is per row: the entries of row i of W
// [out, in] against those of row i of W' = W[rows][:, cols] (nn.Linear
// layout), averaged over rows; vectors are one row. (Rows as samples would
// say nothing: sample dCor of independent vectors of a few hundred
// dimensions is near 1.)
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/audit/server_view.h"

namespace stip {

// dCor of paired samples: x [n] or [n, p], y [n] or [n, q] (rows = samples).
// In [0, 1]; 1 for y = a*x*Q + b (Q orthogonal), near 0 for independent data
// as n grows. Throws kInvalidArgument for mismatched sample counts or n < 2.
double DistanceCorrelation(const at::Tensor& x, const at::Tensor& y);

struct DistanceCorrelationOptions {
  std::vector<int64_t> hidden_sizes = {128, 256, 512, 1024, 2048, 4096, 8192};
  int vectors_per_size = 8;   // per-vector figures: mean over this many vectors
  int tokens_per_size = 128;  // across-tokens figures: rows of X
  int rows_per_tensor = 16;   // parameters: rows compared per tensor
  uint64_t seed = 1;          // synthetic data and projections (not keys)
};

// Figures for the parameters and the embeddings of `subject`/`view`, and the
// sweep over hidden sizes on synthetic Gaussian embeddings.
nlohmann::ordered_json AuditDistanceCorrelation(const AuditSubject& subject, const ServerView& view,
                                                const DistanceCorrelationOptions& options = {});

}  // namespace stip
