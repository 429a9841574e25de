// The user's side of STIP's permutations (docs/transform.md): the
// client permutes the hidden states it sends, x' = x[..., p], and
// un-permutes the logits it gets back, o = o'[..., argsort(p_c)]. The
// Generator (client/generator.h) does this per token; the verification
// (common/transform/verify.h), the audit, stip-bench and the tests do the
// same through these functions, so there is one definition of the client's
// gathers.
//
// In common/ rather than client/: the client daemon's library needs gRPC,
// and the transform's verification, the audit and stip-bench build without it.
#pragma once

#include <ATen/ATen.h>

#include "common/keys/permutation.h"

namespace stip {

// The client's two gathers with their index tensors built once (per token
// they are then a single index_select each).
class ClientPermuter {
 public:
  ClientPermuter(const Permutation& p, const Permutation& p_c, at::Device device = at::kCPU);
  at::Tensor Permute(const at::Tensor& x) const;          // x' = x[..., p]
  at::Tensor Unpermute(const at::Tensor& o_prime) const;  // o = o'[..., argsort(p_c)]

 private:
  at::Tensor p_, p_c_inverse_;
};

// x' = x[..., p] and o = o'[..., argsort(p_c)], the client's two gathers.
at::Tensor PermuteHidden(const at::Tensor& x, const Permutation& p);
at::Tensor UnpermuteLogits(const at::Tensor& o_prime, const Permutation& p_c);

}  // namespace stip
