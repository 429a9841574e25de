// Keeps secrets (permutation keys, token signing keys, access tokens, users'
// hidden states) out of core dumps: the daemons call DisableCoreDumps() first
// thing. RLIMIT_CORE 0 (no core file) and PR_SET_DUMPABLE 0 (no core, and no
// ptrace or /proc/PID/mem access by other processes of the same user).
// STIP_ALLOW_CORE_DUMPS=1 in the environment leaves both alone (debugging).
#pragma once

namespace stip {

// Returns false if the environment asked to keep core dumps.
bool DisableCoreDumps();

}  // namespace stip
