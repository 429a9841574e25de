#!/usr/bin/env bash
# Roles of the docker-compose demo (same flags as deploy/demo.sh).
#   pki        make the demo CA and certificates into /pki
#   server     stip-server: Inference on :7070 (TLS), ModelStore on :7069 (mutual TLS,
#              the developer's certificate only)
#   developer  transform the demo model, push it to the server's admin port, serve the
#              registry on :7071
#   client     register, then `generate` (default) or `chat` (docker compose run client chat)
set -euo pipefail
role=${1:?role: pki | server | developer | client}
shift
MODEL=${STIP_DEMO_MODEL:-/opt/stip/models/kjv-llama}
case "$role" in
  pki)
    /opt/stip/deploy/make-demo-ca.sh /pki stip-server stip-developer stip-client
    ;;
  server)
    exec stip-server --listen 0.0.0.0:7070 --store /data/store \
      --tls-cert /pki/server.pem --tls-key /pki/server.key \
      --admin-listen 0.0.0.0:7069 --admin-ca /pki/ca.pem --admin-allow-cn stip-developer "$@"
    ;;
  developer)
    umask 077
    if [[ ! -f /handoff/demo.token ]]; then
      stip-developer add-user demo --state /data/developer > /handoff/demo.token
    fi
    exec stip-developer serve --model "$MODEL" --state /data/developer --listen 0.0.0.0:7071 \
      --server stip-server:7069 --public-server-address stip-server:7070 \
      --tls-cert /pki/developer.pem --tls-key /pki/developer.key \
      --tls-ca /pki/ca.pem "$@"
    ;;
  client)
    if [[ ! -f /data/client/credentials.json ]]; then
      for _ in $(seq 1 120); do [[ -s /handoff/demo.token ]] && break; sleep 1; done
      stip-client register --developer stip-developer:7071 --user demo \
        --token "$(cat /handoff/demo.token)" --data-dir /data/client --ca /pki/ca.pem
    fi
    if [[ "${1:-}" == chat ]]; then
      shift
      exec stip-client chat --data-dir /data/client "$@"
    fi
    exec stip-client generate --data-dir /data/client \
      --prompt "${STIP_DEMO_PROMPT:-And God said,}" --max-new-tokens 40 --greedy "$@"
    ;;
  *)
    echo "unknown role $role" >&2
    exit 2
    ;;
esac
