#!/usr/bin/env bash
# The README's run command: the three-party STIP demo on this machine.
# Installs what is missing, builds the three daemons (not the tests and tools:
# deploy/test.sh builds those), makes a demo PKI, then starts
#   stip-server     (P2, the cloud)      on its own port, TLS on
#   stip-developer  (P1, the developer)  transforms the demo model, pushes it to
#                                        the server, serves the registry (TLS)
#   stip-client     (P3, the user)       registers, then opens a chat
#
#   deploy/demo.sh                                           interactive chat
#   deploy/demo.sh --prompt TEXT --max-new-tokens N --greedy one completion, then exit
#   deploy/demo.sh --web                                     the chat page and the
#                       OpenAI-compatible API at http://127.0.0.1:8080 (STIP_DEMO_HTTP=ADDR
#                       to change it; port 0: any free one), until Ctrl-C
#   STIP_DEMO_MODEL=models/kjv-gpt2 deploy/demo.sh ...      the other demo model
# Encoders (docs/encoders.md):
#   STIP_DEMO_MODEL=models/vit-digits deploy/demo.sh --image FILE...    top labels
#   STIP_DEMO_MODEL=models/bert-kjv deploy/demo.sh --fill-mask "TEXT WITH [MASK]"
#                                                                       top words
#   (--top-k K and --json pass through; a sentence-transformers model:
#    deploy/demo.sh --embed TEXT)
# Any other client flags (--temperature, --top-k, --top-p, --seed, ...) pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODEL=${STIP_DEMO_MODEL:-models/kjv-llama}
BUILD_DIR=${STIP_BUILD_DIR:-build}
if [[ "${STIP_DEMO_SKIP_BUILD:-0}" != 1 ]]; then
  deploy/install-deps.sh >&2
  # Only what the demo runs: a first answer without compiling the test suite.
  STIP_BUILD_TARGETS="stip-server stip-developer stip-client" deploy/build.sh >&2
fi
BIN=$ROOT/$BUILD_DIR
WORK=$(mktemp -d "${TMPDIR:-/tmp}/stip-demo.XXXXXX")
chmod 700 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ "${STIP_DEMO_KEEP:-0}" == 1 ]]; then echo "demo files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits for "<name> listening on ADDR" on a daemon's stdout; prints ADDR, or
# with a 5th argument the address of the line "<name> <that> on ADDR" printed before.
wait_listening() {
  local name=$1 out=$2 log=$3 pid=$4 which=${5:-listening}
  for _ in $(seq 1 600); do
    if grep -q "listening on" "$out" 2>/dev/null; then
      sed -n "s/.* $which on \\(.*\\)\$/\\1/p" "$out" | head -n1
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "demo: $name exited during start-up; its log:" >&2
      tail -n 30 "$log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "demo: $name did not start in time; its log:" >&2
  tail -n 30 "$log" >&2
  return 1
}

deploy/make-demo-ca.sh "$WORK/pki" >/dev/null
PKI=$WORK/pki

echo "demo: starting stip-server (P2) ..." >&2
# Clients use --listen (TLS); only the developer's certificate opens the admin
# port (mutual TLS, CN stip-developer), where the model store is.
"$BIN/server/stip-server" --listen 127.0.0.1:0 --store "$WORK/server-store" \
  --tls-cert "$PKI/server.pem" --tls-key "$PKI/server.key" \
  --admin-listen 127.0.0.1:0 --admin-ca "$PKI/ca.pem" --admin-allow-cn stip-developer \
  >"$WORK/server.out" 2>"$WORK/server.log" &
PIDS+=($!)
SERVER=$(wait_listening stip-server "$WORK/server.out" "$WORK/server.log" "${PIDS[-1]}")
ADMIN=$(wait_listening stip-server "$WORK/server.out" "$WORK/server.log" "${PIDS[-1]}" admin)

echo "demo: stip-developer (P1) transforms $MODEL and pushes it to $ADMIN (admin of $SERVER) ..." >&2
TOKEN=$("$BIN/developer/stip-developer" add-user demo --state "$WORK/developer")
"$BIN/developer/stip-developer" serve --model "$MODEL" --state "$WORK/developer" \
  --listen 127.0.0.1:0 --server "$ADMIN" --public-server-address "$SERVER" \
  --tls-cert "$PKI/developer.pem" --tls-key "$PKI/developer.key" --tls-ca "$PKI/ca.pem" \
  >"$WORK/developer.out" 2>"$WORK/developer.log" &
PIDS+=($!)
DEVELOPER=$(wait_listening stip-developer "$WORK/developer.out" "$WORK/developer.log" "${PIDS[-1]}")

echo "demo: stip-client (P3) registers with the developer at $DEVELOPER ..." >&2
"$BIN/client/stip-client" register --developer "$DEVELOPER" --user demo --token "$TOKEN" \
  --data-dir "$WORK/client" --ca "$PKI/ca.pem" >&2

if [[ "${1:-}" == "--web" ]]; then
  shift
  HTTP=${STIP_DEMO_HTTP:-127.0.0.1:8080}
  "$BIN/client/stip-client" serve --data-dir "$WORK/client" --http "$HTTP" "$@" \
    >"$WORK/client.out" 2>"$WORK/client.log" &
  PIDS+=($!)
  ADDR=$(wait_listening stip-client "$WORK/client.out" "$WORK/client.log" "${PIDS[-1]}")
  echo "demo: the chat page: http://$ADDR/" >&2
  echo "demo: the OpenAI-compatible API: http://$ADDR/v1 (any API key; model: $(sed -n 's/.*(model "\([^"]*\)".*/\1/p' "$WORK/client.out"))" >&2
  echo "http://$ADDR/"
  echo "demo: Ctrl-C stops the three parties" >&2
  wait "${PIDS[-1]}"
elif [[ " $* " == *" --image "* ]]; then
  "$BIN/client/stip-client" classify --data-dir "$WORK/client" "$@"
elif [[ " $* " == *" --fill-mask "* || " $* " == *" --embed "* ]]; then
  CMD=fill-mask
  ARGS=()
  while (($# > 0)); do
    case $1 in
      --fill-mask) ARGS+=(--text "$2"); shift 2 ;;
      --embed) CMD=embed; ARGS+=(--text "$2"); shift 2 ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
  "$BIN/client/stip-client" "$CMD" --data-dir "$WORK/client" "${ARGS[@]}"
elif [[ " $* " == *" --prompt "* ]]; then
  "$BIN/client/stip-client" generate --data-dir "$WORK/client" "$@"
else
  echo "demo: chat with the model through STIP (/reset, /exit; Ctrl-C stops an answer)" >&2
  # Ctrl-C belongs to the chat (it stops the current answer): the script ignores
  # it, the client installs its own handler.
  trap '' INT
  "$BIN/client/stip-client" chat --data-dir "$WORK/client" "$@"
fi
