#include "common/engine/kv_cache.h"

#include <algorithm>
#include <atomic>
#include <string>

#include "common/error.h"

namespace stip {

// ---- KvPool ----------------------------------------------------------------------

std::shared_ptr<KvPool> KvPool::Create(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                                       int64_t slots, int64_t capacity, at::ScalarType dtype,
                                       at::Device device) {
  if (num_layers < 1 || num_kv_heads < 1 || head_dim < 1 || slots < 1 || capacity < 1) {
    throw InvalidArgument("KV pool: layers, heads, head size, slots and capacity must be >= 1");
  }
  static std::atomic<uint64_t> next_id{1};
  std::shared_ptr<KvPool> pool(new KvPool());
  pool->id_ = next_id++;
  pool->slots_ = slots;
  pool->capacity_ = capacity;
  // Zeroed, not just allocated: a batch reads (and masks out) keys past a
  // sequence's end, and a masked weight of 0 times a NaN bit pattern would
  // still be NaN.
  auto opts = at::TensorOptions().dtype(dtype).device(device);
  for (int64_t l = 0; l < num_layers; ++l) {
    pool->k_.push_back(at::zeros({slots, num_kv_heads, capacity, head_dim}, opts));
    pool->v_.push_back(at::zeros({slots, num_kv_heads, capacity, head_dim}, opts));
  }
  for (int64_t s = slots - 1; s >= 0; --s) pool->free_.push_back(s);
  return pool;
}

KvCache KvPool::Acquire() {
  int64_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) {
      throw ResourceExhausted("KV cache pool: all " + std::to_string(slots_) +
                              " sequence slots are in use");
    }
    id = free_.back();
    free_.pop_back();
  }
  KvCache c;
  const at::Tensor& k0 = k_.front();
  c.num_kv_heads_ = k0.size(1);
  c.head_dim_ = k0.size(3);
  c.dtype_ = k0.scalar_type();
  c.device_ = k0.device();
  for (size_t l = 0; l < k_.size(); ++l) {
    c.k_.push_back(k_[l].select(0, id));
    c.v_.push_back(v_[l].select(0, id));
  }
  c.slot_ = std::make_shared<KvCache::Slot>();
  c.slot_->pool = shared_from_this();
  c.slot_->id = id;
  return c;
}

void KvPool::Release(int64_t slot) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(slot);
}

int64_t KvPool::free_slots() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(free_.size());
}

int64_t KvPool::bytes() const {
  int64_t total = 0;
  for (const auto& t : k_) total += t.numel() * static_cast<int64_t>(t.element_size());
  return 2 * total;
}

KvCache::Slot::~Slot() {
  if (pool) pool->Release(id);
}

// ---- KvCache ---------------------------------------------------------------------

KvCache::KvCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, at::ScalarType dtype,
                 at::Device device)
    : num_kv_heads_(num_kv_heads),
      head_dim_(head_dim),
      dtype_(dtype),
      device_(device),
      k_(static_cast<size_t>(num_layers)),
      v_(static_cast<size_t>(num_layers)) {}

void KvCache::CheckCapacity(int64_t positions) const {
  if (slot_ && positions > slot_->pool->capacity()) {
    throw ResourceExhausted("context of " + std::to_string(positions) +
                            " positions exceeds the KV cache pool's " +
                            std::to_string(slot_->pool->capacity()) + " per sequence");
  }
}

void KvCache::Reserve(int layer, int64_t positions) {
  at::Tensor& k = k_[static_cast<size_t>(layer)];
  at::Tensor& v = v_[static_cast<size_t>(layer)];
  int64_t capacity = k.defined() ? k.size(1) : 0;
  if (positions <= capacity) return;
  CheckCapacity(positions);  // a pooled slot never grows
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
  if (!slot_) {
    for (auto& t : k_) t = at::Tensor();
    for (auto& t : v_) t = at::Tensor();
  }
  length_ = 0;
}

int64_t KvCache::bytes() const {
  if (slot_) return slot_->pool->bytes() / slot_->pool->slots();
  int64_t total = 0;
  for (const auto& t : k_) {
    if (t.defined()) total += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return 2 * total;
}

}  // namespace stip
