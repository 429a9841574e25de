#include "common/client/client_permuter.h"

namespace stip {

namespace {

at::Tensor Index(const Permutation& p, at::Device device) {
  return at::tensor(at::ArrayRef<int64_t>(p), at::kLong).to(device);
}

}  // namespace

ClientPermuter::ClientPermuter(const Permutation& p, const Permutation& p_c, at::Device device)
    : p_(Index(p, device)), p_c_inverse_(Index(InversePermutation(p_c), device)) {}

at::Tensor ClientPermuter::Permute(const at::Tensor& x) const {
  return x.index_select(-1, p_.device() == x.device() ? p_ : p_.to(x.device()));
}

at::Tensor ClientPermuter::Unpermute(const at::Tensor& o) const {
  return o.index_select(
      -1, p_c_inverse_.device() == o.device() ? p_c_inverse_ : p_c_inverse_.to(o.device()));
}

at::Tensor PermuteHidden(const at::Tensor& x, const Permutation& p) {
  return x.index_select(-1, Index(p, x.device()));
}

at::Tensor UnpermuteLogits(const at::Tensor& o_prime, const Permutation& p_c) {
  return o_prime.index_select(-1, Index(InversePermutation(p_c), o_prime.device()));
}

}  // namespace stip
