#include "common/engine/kv_cache.h"

#include <algorithm>

#include "common/error.h"

namespace stip {

KvCache::KvCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype,
                 at::Device device)
    : num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      dtype_(dtype),
      device_(device),
      k_(static_cast<size_t>(num_layers)),
      v_(static_cast<size_t>(num_layers)) {}

void KvCache::Reserve(int layer, int64_t positions) {
  at::Tensor& k = k_[static_cast<size_t>(layer)];
  at::Tensor& v = v_[static_cast<size_t>(layer)];
  int64_t capacity = k.defined() ? k.size(1) : 0;
  if (positions <= capacity) return;
  int64_t next = std::max<int64_t>({positions, 2 * capacity, 16});
  auto opts = at::TensorOptions().dtype(dtype_).device(device_);
  at::Tensor nk = at::empty({num_kv_heads_, next, head_dim_}, opts);
  at::Tensor nv = at::empty({num_kv_heads_, next, head_dim_}, opts);
  if (length_ > 0) {
    nk.narrow(1, 0, length_).copy_(k.narrow(1, 0, length_));
    nv.narrow(1, 0, length_).copy_(v.narrow(1, 0, length_));
  }
  k = nk;
  v = nv;
}

std::pair<at::Tensor, at::Tensor> KvCache::Append(int layer, const at::Tensor& k,
                                                  const at::Tensor& v) {
  if (layer < 0 || layer >= static_cast<int>(k_.size())) {
    throw Internal("KvCache::Append: layer out of range");
  }
  const int64_t t = k.size(0);
  Reserve(layer, length_ + t);
  at::Tensor& ck = k_[static_cast<size_t>(layer)];
  at::Tensor& cv = v_[static_cast<size_t>(layer)];
  ck.narrow(1, length_, t).copy_(k.transpose(0, 1));
  cv.narrow(1, length_, t).copy_(v.transpose(0, 1));
  return {ck.narrow(1, 0, length_ + t), cv.narrow(1, 0, length_ + t)};
}

void KvCache::Truncate(int64_t length) {
  if (length < 0 || length > length_) throw InvalidArgument("KvCache::Truncate: bad length");
  length_ = length;
}

void KvCache::Clear() {
  for (auto& t : k_) t = at::Tensor();
  for (auto& t : v_) t = at::Tensor();
  length_ = 0;
}

int64_t KvCache::bytes() const {
  int64_t total = 0;
  for (const auto& t : k_) {
    if (t.defined()) total += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return 2 * total;
}

}  // namespace stip
