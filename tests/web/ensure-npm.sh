#!/usr/bin/env bash
# Installs npm packages used as test oracles into DIR/node_modules when they
# are missing there (the network is touched only then).
# Usage: tests/web/ensure-npm.sh DIR NAME@VERSION...
set -euo pipefail
dir=$1
shift
command -v node >/dev/null || { echo "ensure-npm: node is missing (deploy/install-deps.sh installs nodejs)" >&2; exit 3; }
command -v npm >/dev/null || { echo "ensure-npm: npm is missing (deploy/install-deps.sh installs npm)" >&2; exit 3; }
mkdir -p "$dir"
missing=()
for spec in "$@"; do
  name=${spec%@*}
  want=${spec##*@}
  have=$(node -e "try{console.log(require('$dir/node_modules/$name/package.json').version)}catch(e){}")
  [[ "$have" == "$want" ]] || missing+=("$spec")
done
((${#missing[@]} == 0)) && exit 0
# A lock so that tests running at once install once.
exec 9>"$dir/.npm-lock"
flock 9
cd "$dir"
[[ -f package.json ]] || echo '{"name":"stip-test-oracles","private":true}' >package.json
npm install --no-audit --no-fund --loglevel=error "${missing[@]}" >&2
