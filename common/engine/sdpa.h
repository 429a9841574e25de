// Whether this LibTorch has at::scaled_dot_product_attention with a `scale`
// argument (2.1 and later), and the optional type its signature uses.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#include <optional>

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
#define STIP_HAVE_SDPA 1
#else
#define STIP_HAVE_SDPA 0
#endif

namespace stip {

#if STIP_HAVE_SDPA
// c10::optional is std::optional from LibTorch 2.2 on (and is being removed).
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 2
template <typename T>
using TorchOptional = std::optional<T>;
#else
template <typename T>
using TorchOptional = c10::optional<T>;
#endif
#endif

// False where the fused kernel is unavailable, or when STIP_ATTENTION=manual
// selects the explicit softmax path (for comparisons).
bool UseSdpa();

}  // namespace stip
