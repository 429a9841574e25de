#include "common/engine/cpu_runtime.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <sched.h>

#include <cstdint>
#include <cstdlib>
#include <set>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace stip {

namespace {

#if defined(__x86_64__)
// Which vector state the OS saves (XCR0): AVX needs bits 1-2, AVX-512 5-7 too.
uint64_t EnabledXsaveFeatures() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;  // no OSXSAVE
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

// The OpenBLAS kernels this CPU should get ("" if none better than generic).
std::string BestOpenBlasCore() {
#if defined(__x86_64__)
  const uint64_t xcr0 = EnabledXsaveFeatures();
  const bool avx_state = (xcr0 & 0x6) == 0x6, avx512_state = (xcr0 & 0xe6) == 0xe6;
  __builtin_cpu_init();
  if (avx512_state && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl")) {
    return "SkylakeX";
  }
  if (avx_state && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return "Haswell";
  }
#endif
  return "";
}

template <typename F>
F BlasSymbol(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_DEFAULT, name));
}

std::string OpenBlasCoreName() {
  auto name = BlasSymbol<char* (*)()>("openblas_get_corename");
  const char* n = name ? name() : nullptr;
  return n ? std::string(n) : std::string();
}

int EnvInt(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : 0;
}

CpuRuntime Configure(int threads) {
  CpuRuntime r;
  if (threads <= 0) threads = EnvInt("STIP_NUM_THREADS");
  if (threads <= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) threads = CPU_COUNT(&set);
  }
  if (threads <= 0) threads = 1;
  r.threads = threads;

  r.blas_core_detected = r.blas_core = OpenBlasCoreName();
  static const std::set<std::string> kGeneric = {"Prescott", "Katmai", "Coppermine", "Northwood",
                                                 "Banias",   "Core2",  "Penryn",     "Dunnington",
                                                 "Nehalem",  "Atom"};
  auto quit = BlasSymbol<void (*)()>("gotoblas_dynamic_quit");
  auto init = BlasSymbol<void (*)()>("gotoblas_dynamic_init");
  const std::string best = BestOpenBlasCore();
  if (kGeneric.count(r.blas_core) && !best.empty() && quit && init &&
      !std::getenv("OPENBLAS_CORETYPE")) {
    // OpenBLAS (DYNAMIC_ARCH) picks its kernel table from OPENBLAS_CORETYPE
    // when (re-)initialized; nothing else is reset.
    setenv("OPENBLAS_CORETYPE", best.c_str(), 1);
    quit();
    init();
    unsetenv("OPENBLAS_CORETYPE");
    r.blas_core = OpenBlasCoreName();
  }
  int aten = threads;
  auto set_blas_threads = BlasSymbol<void (*)(int)>("openblas_set_num_threads");
  auto blas_parallel = BlasSymbol<int (*)()>("openblas_get_parallel");
  if (set_blas_threads) {
    set_blas_threads(threads);
    r.blas_threads = threads;
    if (blas_parallel && blas_parallel() == 1) aten = 1;  // pthreads pool: see the header
  }
  if (EnvInt("STIP_ATEN_THREADS") > 0) aten = EnvInt("STIP_ATEN_THREADS");
  at::set_num_threads(aten);
  r.aten_threads = at::get_num_threads();
  return r;
}

}  // namespace

const CpuRuntime& ConfigureCpuRuntime(int threads) {
  static const CpuRuntime runtime = Configure(threads);
  return runtime;
}

void InitComputeThread() { at::init_num_threads(); }

}  // namespace stip
