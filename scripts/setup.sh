#!/usr/bin/env bash
# Installs every Debian package that lasp's build, tests and benchmarks need; with --fuzz also clang for
# scripts/fuzz.sh (CI does not fuzz, so it does not install them).
# Idempotent: when everything is present it only checks, which takes well under a second.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libdnnl-dev                       # oneDNN: sgemm behind the gemm seam (OpenMP runtime: one thread inside parallel regions)
  openmpi-bin libopenmpi-dev        # the distributed engine
  nlohmann-json3-dev libcli11-dev libfmt-dev
  libgtest-dev googletest
  python3-torch python3-numpy       # PyTorch reference (run with /usr/bin/python3)
  libopenblas0-pthread              # an optimized BLAS for PyTorch, which otherwise runs on the reference BLAS (~25x slower)
  gnuplot-nox                       # `lasp plot`: loss curves as PNG
  libsentencepiece-dev python3-sentencepiece  # `lasp tokenize` (subword text); Python's, to check its encodings
  zlib1g-dev libzstd-dev zstd       # `lasp tokenize` of .gz and .zst corpora; zstd for its tests
  fortunes                          # scripts/demo.sh's corpus (/usr/share/games/fortunes: ~15,000 short texts)
  procps iproute2                   # pgrep in the failure tests; ip and tc for scripts/bench_shaped.sh
  time                              # /usr/bin/time: tokenize's peak memory in tests/test_corpus.cpp
  jq                                # scripts/table2.sh reads the runs' metrics
)
# scripts/fuzz.sh: clang 16 (14 rejects C++20 lambda captures of bindings), libFuzzer, ASan/UBSan, OpenMP
if [ "${1:-}" = --fuzz ]; then packages+=(clang-16 libclang-rt-16-dev libomp-16-dev); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: all packages present"
