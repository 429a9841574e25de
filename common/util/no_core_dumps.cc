#include "common/util/no_core_dumps.h"

#include <sys/prctl.h>
#include <sys/resource.h>

#include <cstdlib>
#include <cstring>

namespace stip {

bool DisableCoreDumps() {
  const char* allow = std::getenv("STIP_ALLOW_CORE_DUMPS");
  if (allow && std::strcmp(allow, "1") == 0) return false;
  struct rlimit none {};
  setrlimit(RLIMIT_CORE, &none);
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  return true;
}

}  // namespace stip
