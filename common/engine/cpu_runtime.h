// The process-wide CPU set-up for tensor work: how many threads ATen and
// OpenBLAS use, and which OpenBLAS kernels run. The server's batch
// schedulers, the audit, stip-bench and the tests call it before their first
// model runs.
#pragma once

#include <string>

namespace stip {

struct CpuRuntime {
  int threads = 0;                 // cores used: OpenBLAS's threads
  int aten_threads = 0;            // ATen's intra-op (OpenMP) threads
  int blas_threads = 0;            // OpenBLAS's threads (0: no OpenBLAS)
  std::string blas_core;           // OpenBLAS kernels in use ("" if LibTorch has no OpenBLAS)
  std::string blas_core_detected;  // what OpenBLAS picked by itself at load
};

// Configures the process once, before tensor work runs on other threads;
// later calls return the first call's result.
//  - Threads: `threads` if > 0, else $STIP_NUM_THREADS, else the CPUs this
//    process may run on. OpenBLAS (which does the matrix products) gets them
//    all. ATen's own OpenMP pool gets them too, except beside a pthreads
//    OpenBLAS (Debian's), whose pool would fight an OpenMP pool for the same
//    cores (both spin after each call: matrix products measured 2x slower
//    with both at 2 threads on 2 CPUs); there ATen keeps one thread.
//    $STIP_ATEN_THREADS overrides ATen's count.
//  - OpenBLAS kernels: where its CPU detection fell back to generic SSE3
//    kernels ("Prescott": a CPU model it does not know, as in many VMs) on a
//    CPU whose OS enables AVX-512 or AVX2+FMA, it switches to the SkylakeX or
//    Haswell kernels -- up to 7x on small matrix products. A user's
//    $OPENBLAS_CORETYPE is left alone.
const CpuRuntime& ConfigureCpuRuntime(int threads = 0);

// Applies the configured intra-op thread count to the calling thread (OpenMP
// keeps it per thread): call first thing in a thread that runs the model.
void InitComputeThread();

}  // namespace stip
