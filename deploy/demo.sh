#!/usr/bin/env bash
# The README's run command. Installs what is missing, builds, and runs the demo
# model (King James Bible LLaMA) with the stip engine.
#   deploy/demo.sh                                   interactive prompt loop
#   deploy/demo.sh --prompt TEXT --max-new-tokens N --greedy   one completion
# Until the three daemons land, this runs the engine locally in one process;
# it will start developer, server and client (TLS on) with the same flags.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${STIP_DEMO_MODEL:-models/kjv-llama}
deploy/install-deps.sh >&2
deploy/build.sh >&2
BUILD_DIR=${STIP_BUILD_DIR:-build}
# Prove on this machine, before serving, that the STIP path equals the plain model.
"$BUILD_DIR/developer/stip-developer" verify --model "$MODEL" >&2
exec "$BUILD_DIR/tools/stip-generate" --model "$MODEL" "$@"
