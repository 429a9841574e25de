#!/usr/bin/env bash
# Makes a small demo PKI with OpenSSL for the demo and docker-compose:
#   ca.pem / ca.key            the demo certificate authority
#   server.pem / server.key    stip-server   (SAN: localhost, 127.0.0.1, stip-server)
#   developer.pem / .key       stip-developer (server and client auth: it serves the
#                              registry and authenticates to the server's model store;
#                              the demo server admits CN=stip-developer only there)
#   client.pem / client.key    stip-client's local chat API
# Usage: deploy/make-demo-ca.sh DIR [extra SAN names...]
# Keys are 0600 in a 0700 directory. Existing files are kept (idempotent).
set -euo pipefail
DIR=${1:?usage: make-demo-ca.sh DIR [names...]}
shift || true
EXTRA=("$@")
umask 077
mkdir -p "$DIR"
chmod 700 "$DIR"
cd "$DIR"

if [[ ! -f ca.pem ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=stip demo CA" -keyout ca.key -out ca.pem 2>/dev/null
fi

issue() {  # name, extended key usage
  local name=$1 eku=$2
  [[ -f $name.pem ]] && return
  local san="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:stip-$name,DNS:$name"
  for n in "${EXTRA[@]}"; do san+=",DNS:$n"; done
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=stip-$name" \
    -keyout "$name.key" -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$san" "$eku" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
issue server serverAuth
issue developer serverAuth,clientAuth
issue client serverAuth,clientAuth
chmod 600 ./*.key
chmod 644 ./*.pem
echo "demo PKI in $DIR"
