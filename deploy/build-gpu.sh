#!/usr/bin/env bash
# Builds stip's engine, transform, tests and stip-bench on a GPU machine
# against the LibTorch of a Python environment (default /opt/torch/.venv, the
# PyTorch there), without gRPC, then benchmarks the engine on CUDA next to the
# Hugging Face peer (tools/bench_hf.py) and writes both JSONs side by side.
#
#   deploy/build-gpu.sh                 build, run the CPU tests, bench (fp16)
#   deploy/build-gpu.sh --no-tests      skip ctest
#   deploy/build-gpu.sh --no-bench      build (and test) only
#   deploy/build-gpu.sh --no-hf         skip the Hugging Face peer
#   deploy/build-gpu.sh --repro-llama-b64  instead of the benchmarks: the LLaMA-7B
#                                        batch-64 decode that once stopped on a
#                                        device-side index assertion, with
#                                        CUDA_LAUNCH_BLOCKING=1, CUDA graphs on
#                                        then off (logs in the bench output dir)
#   deploy/build-gpu.sh fetch-debs DIR  (on a machine WITH network, same distro
#                                        family) download the -dev packages below
#                                        into DIR, to carry to an offline GPU box
#
# Environment: STIP_TORCH_PYTHON (python with torch; default
# /opt/torch/.venv/bin/python3, else python3), STIP_BUILD_DIR (build-gpu),
# STIP_BENCH_OUT (where the JSONs go; default $OUT if set, else
# $STIP_BUILD_DIR/bench), STIP_GPU_DEBS (carried .deb files; default .gpu-debs),
# STIP_HF_BENCH (path of bench_hf.py), STIP_HF_BUDGET_S (600), STIP_JOBS,
# STIP_CMAKE_ARGS (more CMake arguments), STIP_TARGETS, STIP_CTEST_REGEX.
#
# Dependencies: the build needs (besides LibTorch, CMake, ninja, a C++17
# compiler) spdlog, GoogleTest, OpenSSL, nlohmann-json, CLI11, PCRE2 and
# SentencePiece. Missing Debian/Ubuntu -dev packages are installed with
# apt-get; where there is no network (the lent GPU machines have none), .deb
# files carried in $STIP_GPU_DEBS are unpacked into .gpu-deps/ (never into /)
# and put on the search paths.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PACKAGES=(pkg-config pkgconf pkgconf-bin libpkgconf3 nlohmann-json3-dev libcli11-dev libpcre2-dev libsentencepiece-dev
          libicu-dev libspdlog-dev libfmt-dev libgtest-dev libssl-dev)
# What the -dev packages above need at run time (for fetch-debs).
RUNTIME_PACKAGES=(libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libsentencepiece0 libicu72
                  libprotobuf-lite32 libspdlog1.10 libfmt9 libssl3)

if [[ "${1:-}" == fetch-debs ]]; then
  dir=${2:-.gpu-debs}
  mkdir -p "$dir"
  apt-get update -qq
  (cd "$dir" && for p in "${PACKAGES[@]}" "${RUNTIME_PACKAGES[@]}"; do
     apt-get download "$p" || echo "fetch-debs: no package $p here (skipped)" >&2
   done)
  echo "fetch-debs: $(find "$dir" -name "*.deb" | wc -l) packages in $dir ($(du -sh "$dir" | cut -f1))"
  exit 0
fi

RUN_TESTS=1 RUN_BENCH=1 RUN_HF=1 REPRO_LLAMA_B64=0
for a in "$@"; do
  case "$a" in
    --repro-llama-b64) REPRO_LLAMA_B64=1 RUN_TESTS=0 ;;
    --no-tests) RUN_TESTS=0 ;;
    --no-bench) RUN_BENCH=0 ;;
    --no-hf) RUN_HF=0 ;;
    *) echo "build-gpu.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

BUILD_DIR=${STIP_BUILD_DIR:-build-gpu}
JOBS=${STIP_JOBS:-$(nproc)}
PY=${STIP_TORCH_PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x /opt/torch/.venv/bin/python3 ]]; then PY=/opt/torch/.venv/bin/python3; else PY=python3; fi
fi
[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"

# ---- dependencies ------------------------------------------------------------
# Each package is checked by a file it installs (the GPU images need not be
# Debian, nor have dpkg's records). A missing one comes from apt-get where it
# works, else from the .deb files carried in $STIP_GPU_DEBS, unpacked into
# .gpu-deps/ (never into /) -- only the missing packages, so that carried
# headers never shadow the system's own copy of a library.
ARCH=$(gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
declare -A PROBE=(
  [nlohmann-json3-dev]=/usr/include/nlohmann/json.hpp
  [libcli11-dev]=/usr/include/CLI/CLI.hpp
  [libpcre2-dev]=/usr/include/pcre2.h
  [libicu-dev]=/usr/include/unicode/normalizer2.h
  [libsentencepiece-dev]=/usr/include/sentencepiece_processor.h
  [libspdlog-dev]=/usr/include/spdlog/spdlog.h
  [libfmt-dev]=/usr/include/fmt/core.h
  [libgtest-dev]=/usr/include/gtest/gtest.h
  [libssl-dev]=/usr/include/openssl/ssl.h
)
# Run-time libraries a carried -dev package needs (unpacked only if absent).
declare -A RUNTIME_OF=(
  [libpcre2-dev]="libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3"
  [libsentencepiece-dev]="libsentencepiece0 libprotobuf-lite32"
  [libicu-dev]="libicu72"
  [libspdlog-dev]="libspdlog1.10"
  [libfmt-dev]="libfmt9"
)
missing=()
for p in "${!PROBE[@]}"; do
  # STIP_GPU_FORCE_CARRIED=1: use the carried packages even where installed (to test this).
  [[ -e "${PROBE[$p]}" && -z "${STIP_GPU_FORCE_CARRIED:-}" ]] || missing+=("$p")
done
# spdlog from a carried package needs the fmt it was built with.
if [[ " ${missing[*]} " == *" libspdlog-dev "* && " ${missing[*]} " != *" libfmt-dev "* ]]; then
  missing+=(libfmt-dev)
fi
command -v pkg-config >/dev/null || missing+=(pkg-config)
if ((${#missing[@]})); then
  echo "build-gpu: missing: ${missing[*]}"
  DEBS=${STIP_GPU_DEBS:-$ROOT/.gpu-debs}
  if compgen -G "$DEBS/*.deb" >/dev/null; then
    PREFIX=$ROOT/.gpu-deps
    rm -rf "$PREFIX" && mkdir -p "$PREFIX"
    unpack() {  # package name -> its carried .deb, if any
      local f
      for f in "$DEBS/$1"_*.deb; do
        [[ -f "$f" ]] || continue
        if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$f" "$PREFIX"; return 0; fi
        local member   # no dpkg: a .deb is an ar archive around data.tar.*
        member=$(ar t "$f" | grep '^data\.tar')
        case "$member" in
          *.xz) ar p "$f" "$member" | tar -xJ -C "$PREFIX" ;;
          *.zst) ar p "$f" "$member" | zstd -dc | tar -x -C "$PREFIX" ;;
          *) ar p "$f" "$member" | tar -xz -C "$PREFIX" ;;
        esac
        return 0
      done
      echo "build-gpu: no carried package $1 in $DEBS" >&2
      return 1
    }
    for p in "${missing[@]}"; do
      if [[ $p == pkg-config ]]; then
        unpack pkg-config || true; unpack pkgconf || true; unpack pkgconf-bin || true
        unpack libpkgconf3 || true
        continue
      fi
      unpack "$p" || true
      for r in ${RUNTIME_OF[$p]:-}; do
        lib=$(dpkg-deb -c "$DEBS/$r"_*.deb 2>/dev/null | awk '{print $6}' | grep -m1 '\.so\.' || true)
        if [[ -n "$lib" && -e "${lib#.}" ]]; then continue; fi   # the system has it
        unpack "$r" || true
      done
    done
    # Links of -dev packages point at run-time libraries that may be the
    # system's own: repoint dangling ones there.
    while IFS= read -r link; do
      target=$(readlink "$link")
      for dir in "/usr/lib/$ARCH" /usr/lib /lib/"$ARCH"; do
        if [[ -e "$dir/$(basename "$target")" ]]; then ln -sf "$dir/$(basename "$target")" "$link"; break; fi
      done
    done < <(find "$PREFIX" -xtype l)
    export CMAKE_PREFIX_PATH="$PREFIX/usr:$PREFIX/usr/lib/$ARCH/cmake:$PREFIX/usr/share/cmake:${CMAKE_PREFIX_PATH:-}"
    export PKG_CONFIG_PATH="$PREFIX/usr/lib/$ARCH/pkgconfig:$PREFIX/usr/share/pkgconfig:/usr/lib/$ARCH/pkgconfig:/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
    export CPATH="$PREFIX/usr/include:${CPATH:-}"
    export LIBRARY_PATH="$PREFIX/usr/lib/$ARCH:${LIBRARY_PATH:-}"
    export LD_LIBRARY_PATH="$PREFIX/usr/lib/$ARCH:${LD_LIBRARY_PATH:-}"
    # pkg-config files name /usr as their prefix: point them at the unpacked tree.
    for pc in "$PREFIX"/usr/lib/"$ARCH"/pkgconfig/*.pc "$PREFIX"/usr/share/pkgconfig/*.pc; do
      [[ -f "$pc" ]] && sed -i "s#^prefix=/usr\$#prefix=$PREFIX/usr#" "$pc"
    done
    [[ -x "$PREFIX/usr/bin/pkgconf" && ! -e "$PREFIX/usr/bin/pkg-config" ]] &&
      ln -s pkgconf "$PREFIX/usr/bin/pkg-config"
    export PATH="$PATH:$PREFIX/usr/bin"
  elif command -v apt-get >/dev/null && timeout 60 apt-get update -qq >/dev/null 2>&1; then
    pkgs=("${missing[@]}")
    apt-get install -y --no-install-recommends "${pkgs[@]}"
  else
    echo "build-gpu: cannot install them (offline, and no .deb files in $DEBS);" \
         "trying the build anyway (CMake says what is really missing)." >&2
    echo "  On a networked Debian 12 machine: deploy/build-gpu.sh fetch-debs .gpu-debs" >&2
  fi
fi

# ---- LibTorch ------------------------------------------------------------------
TORCH_INFO=$("$PY" - <<'EOF'
import torch
print(torch.utils.cmake_prefix_path)
print(torch.__version__)
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.cuda.is_available())
EOF
)
TORCH_PREFIX=$(sed -n 1p <<<"$TORCH_INFO")
TORCH_VERSION=$(sed -n 2p <<<"$TORCH_INFO")
echo "build-gpu: LibTorch $TORCH_VERSION from $PY (CXX11 ABI $(sed -n 3p <<<"$TORCH_INFO"), CUDA available: $(sed -n 4p <<<"$TORCH_INFO"))"
major=${TORCH_VERSION%%.*}; rest=${TORCH_VERSION#*.}; minor=${rest%%.*}
if ((major > 2 || (major == 2 && minor >= 13))); then
  echo "build-gpu: warning: LibTorch >= 2.13 needs C++20; CMakeLists.txt sets C++17" >&2
fi

GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTIP_WITH_GRPC=OFF \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX${CMAKE_PREFIX_PATH:+;${CMAKE_PREFIX_PATH//:/;}}" \
  ${STIP_CMAKE_ARGS:-}   # e.g. -DSTIP_CUDA_GRAPHS=OFF
# STIP_TARGETS limits the build (e.g. "stip-bench fast_path_test"), and
# STIP_CTEST_REGEX the tests run.
# shellcheck disable=SC2086
cmake --build "$BUILD_DIR" -j "$JOBS" ${STIP_TARGETS:+--target $STIP_TARGETS} \
  ${GEN:+-- -k 0}   # ninja: report every failing file, not just the first

if ((RUN_TESTS)); then
  (cd "$BUILD_DIR" && ctest --output-on-failure -j "$JOBS" --timeout 900 \
     ${STIP_CTEST_REGEX:+-R "$STIP_CTEST_REGEX"})
fi
((RUN_BENCH)) || exit 0

# ---- benchmarks: stip-bench and the Hugging Face peer, same machine, same run ----
OUT_DIR=${STIP_BENCH_OUT:-${OUT:-$BUILD_DIR/bench}}
mkdir -p "$OUT_DIR"
BENCH="$BUILD_DIR/tools/stip-bench"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  >"$OUT_DIR/gpu.txt" 2>/dev/null || true

if ((REPRO_LLAMA_B64)); then
  # The run of 2026-11-26 that failed: after the forward and batch-1 phases,
  # 2 reps x 68 decode steps at batch 64. Synchronous launches name the kernel.
  for graphs in 1 0; do
    echo "build-gpu: llama-7b batch 64, STIP_CUDA_GRAPHS=$graphs, CUDA_LAUNCH_BLOCKING=1"
    CUDA_LAUNCH_BLOCKING=1 STIP_CUDA_GRAPHS=$graphs "$BENCH" --device cuda --dtype float16 \
      --preset llama-7b --sections engine --batch 8 --tokens 16 --reps 1 --decode-batches 1,64 \
      --context 128 --warmup 4 --steps 64 --decode-reps 2 \
      >"$OUT_DIR/repro_llama_b64_graphs$graphs.json" 2>"$OUT_DIR/repro_llama_b64_graphs$graphs.txt" \
      && echo "  finished" || echo "  FAILED (exit $?): see $OUT_DIR/repro_llama_b64_graphs$graphs.txt"
    tail -5 "$OUT_DIR/repro_llama_b64_graphs$graphs.txt"
  done
  exit 0
fi

# Shapes as bench_hf.py: forward 100 x 100; GPT-2 decode at batch 1 and 64
# after a 128-token prompt, 128 new tokens; LLaMA-7B decode at batch 1 after
# 128, 64 new tokens. fp16 on CUDA, random weights.
echo "build-gpu: stip-bench gpt2-124m"
"$BENCH" --device cuda --dtype float16 --preset gpt2-124m --sections engine \
  --batch 100 --tokens 100 --reps 5 --decode-batches 1,64 --context 128 --warmup 4 --steps 128 \
  --decode-reps 2 >"$OUT_DIR/stip_gpt2-124m.json" 2> >(tee "$OUT_DIR/stip_gpt2-124m.txt" >&2)
echo "build-gpu: stip-bench llama-7b"
"$BENCH" --device cuda --dtype float16 --preset llama-7b --sections engine \
  --batch 100 --tokens 100 --reps 3 --decode-batches 1 --context 128 --warmup 4 --steps 64 \
  --decode-reps 2 >"$OUT_DIR/stip_llama-7b.json" 2> >(tee "$OUT_DIR/stip_llama-7b.txt" >&2)
# The client's per-token work and the demo models' footprint (CPU).
"$BENCH" --sections client,models >"$OUT_DIR/stip_client.json" 2>"$OUT_DIR/stip_client.txt" || true

HF=${STIP_HF_BENCH:-tools/bench_hf.py}
if ((RUN_HF)) && [[ -n "$HF" ]]; then
  echo "build-gpu: Hugging Face peer $HF"
  "$PY" "$HF" "$OUT_DIR" "${STIP_HF_BUDGET_S:-600}" 2>&1 | tee "$OUT_DIR/bench_hf.txt" || true
else
  echo "build-gpu: no Hugging Face peer run (bench_hf.py not found or --no-hf)"
fi

# Side by side.
"$PY" - "$OUT_DIR" <<'EOF'
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception:
        return None
g, l, hf = load("stip_gpt2-124m.json"), load("stip_llama-7b.json"), load("bench_hf.json") or {}
def dec(j, b, key):
    for d in (j or {}).get("decode", []):
        if d["batch"] == b:
            return d[key]
rows = []
hg = hf.get("gpt2-124m") if isinstance(hf.get("gpt2-124m"), dict) else {}
hl = hf.get("llama2-7b-shape") if isinstance(hf.get("llama2-7b-shape"), dict) else {}
rows.append(("gpt2-124m forward 100x100 tok/s", (g or {}).get("forward", {}).get("stip_tokens_per_s"),
             (g or {}).get("forward", {}).get("plain_tokens_per_s"), hg.get("forward_b100_t100_tok_per_s"), ">= HF"))
rows.append(("gpt2-124m decode b1 ms/step", dec(g, 1, "stip_ms_per_step"), dec(g, 1, "plain_ms_per_step"),
             hg.get("decode_b1_ms_per_step"), "<= 1.6"))
rows.append(("gpt2-124m decode b64 tok/s", dec(g, 64, "stip_tokens_per_s"), dec(g, 64, "plain_tokens_per_s"),
             hg.get("decode_b64_tok_per_s"), ">= 40000"))
rows.append(("llama-7b decode b1 ms/step", dec(l, 1, "stip_ms_per_step"), dec(l, 1, "plain_ms_per_step"),
             hl.get("decode_b1_ms_per_step"), "<= 5.0"))
summary = {"gpu": hf.get("gpu"), "rows": [dict(zip(("metric", "stip", "plain_same_engine", "hf", "target"), r)) for r in rows],
           "stip": {"gpt2-124m": g, "llama-7b": l}, "hf": hf}
json.dump(summary, open(os.path.join(out, "side_by_side.json"), "w"), indent=1)
fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
print(f"{'metric':34} {'stip':>12} {'plain':>12} {'HF':>12}  target")
for r in rows:
    print(f"{r[0]:34} {fmt(r[1]):>12} {fmt(r[2]):>12} {fmt(r[3]):>12}  {r[4]}")
print("written:", os.path.join(out, "side_by_side.json"))
EOF
