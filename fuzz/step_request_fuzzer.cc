// libFuzzer target: the server's request decoder. Arbitrary bytes as a
// SessionRequest (what arrives on Inference.Session), and for a step the
// decoding of its hidden states (server/step_validation.cc over
// common/rpc/tensor_wire.cc) exactly as the server does it, for the demo
// models' hidden size. Contract: a parse failure, a stip::Error naming the
// problem, or a finite tensor of shape [T >= 1, 64] built from exactly the
// bytes sent.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "common/error.h"
#include "common/rpc/tensor_wire.h"
#include "server/step_validation.h"
#include "stip/v1/stip.pb.h"

namespace {
constexpr int64_t kHidden = 64;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  stip::v1::SessionRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (!request.has_step()) return 0;
  const stip::v1::Tensor& wire = request.step().hidden();
  try {
    at::Tensor x = stip::DecodeHiddenStates(wire, kHidden);
    if (x.dim() != 2 || x.size(0) < 1 || x.size(1) != kHidden) abort();
    if (static_cast<size_t>(x.nbytes()) != wire.data().size()) abort();
    if (!at::isfinite(x).all().item<bool>()) abort();
    // Round trip: what the server would send back is what it got.
    stip::v1::Tensor back;
    stip::ToWire(x, &back);
    if (back.data() != wire.data() || back.datatype() != wire.datatype()) abort();
  } catch (const stip::Error&) {
  }
  // The generic decoder with a small element limit.
  try {
    stip::WireLimits limits;
    limits.max_elements = 1 << 16;
    at::Tensor t = stip::FromWire(wire, limits);
    if (t.numel() > limits.max_elements) abort();
  } catch (const stip::Error&) {
  }
  return 0;
}
