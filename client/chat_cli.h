// The interactive prompt of `stip-client chat`: "> " on stdout, one turn per
// line, tokens printed as they arrive, the conversation (and the server's KV
// cache) kept between turns. Commands: /reset (new conversation), /exit (or
// end of input). An interrupt (Ctrl-C: `*interrupted` set by the SIGINT
// handler) during an answer stops that answer and returns to the prompt; at
// the prompt it ends the loop.
#pragma once

#include <atomic>
#include <cstdio>
#include <functional>
#include <string>

#include "client/generator.h"

namespace stip {

// Sets `*flag` on SIGINT (async-signal-safe; installed without SA_RESTART).
// A third interrupt while the flag is still set exits at once (status 130).
void InstallInterruptHandler(std::atomic<bool>* flag);

// Reads lines from `in_fd`, writes the prompt and answers to `out`, errors to
// `err`. Returns the exit status (0).
int RunChat(Generator& generator, const GenerateOptions& options, int in_fd, std::FILE* out,
            std::FILE* err, std::atomic<bool>* interrupted);

// The same, with each turn run by `turn` (e.g. GenerateTurn of
// bundle_refresh.h, which follows key rotations) instead of
// Generator::Generate.
using TurnFunction = std::function<GenerateResult(Generator&, const std::string&,
                                                  const GenerateOptions&, const PieceCallback&)>;
int RunChat(Generator& generator, const GenerateOptions& options, int in_fd, std::FILE* out,
            std::FILE* err, std::atomic<bool>* interrupted, const TurnFunction& turn);

}  // namespace stip
