#!/usr/bin/env bash
# Runs tests/image_oracle.py with Debian's /usr/bin/python3, Pillow and numpy.
# Usage: tests/image_oracle.sh ENV_DIR OUT_DIR VIT_DIGITS_DIR
#
# deploy/install-deps.sh installs python3-pil and python3-numpy. Where they
# are missing, this fetches them and the libraries they need that are not
# installed (apt-get download: no root) into ENV_DIR (in the build directory)
# and unpacks them there; later runs reuse ENV_DIR without the network.
# STIP_ORACLE_FETCH=1 fetches even when the system has them (to test this).
set -euo pipefail
ENV_DIR=$1
shift
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")" && pwd)

if [[ "${STIP_ORACLE_FETCH:-0}" == 1 ]] || ! "$PY" -c 'import PIL, numpy' 2>/dev/null; then
  root="$ENV_DIR/root"
  mkdir -p "$(dirname "$ENV_DIR")"
  exec 9>"$ENV_DIR.lock"
  flock 9  # parallel test processes fetch once
  if [[ ! -f "$ENV_DIR/complete" ]]; then
    echo "image_oracle: fetching python3-pil and python3-numpy into $ENV_DIR" >&2
    rm -rf "$ENV_DIR"
    mkdir -p "$ENV_DIR/debs" "$root"
    fetch=(python3-pil python3-numpy)
    while read -r p; do
      if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        fetch+=("$p")
      fi
    done < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
               --no-breaks --no-replaces --no-enhances python3-pil python3-numpy |
             grep -v -e '^ ' -e '^<' -e '^python3$' -e '^python3\.' | sort -u)
    (cd "$ENV_DIR/debs" && apt-get download "${fetch[@]}" >/dev/null) || {
      echo "image_oracle: cannot fetch ${fetch[*]}; run deploy/install-deps.sh" >&2
      exit 2
    }
    for deb in "$ENV_DIR"/debs/*.deb; do dpkg -x "$deb" "$root"; done
    touch "$ENV_DIR/complete"
  fi
  flock -u 9
  export PYTHONPATH="$root/usr/lib/python3/dist-packages${PYTHONPATH:+:$PYTHONPATH}"
  libs=$(find "$root" -maxdepth 3 -type d -name '*-linux-gnu' | tr '\n' ':')
  export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
  # Without site: the unpacked copies, not a half-present system one.
  exec "$PY" -S "$HERE/image_oracle.py" "$@"
fi
exec "$PY" "$HERE/image_oracle.py" "$@"
