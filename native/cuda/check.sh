#!/usr/bin/env bash
# Compile check of the CUDA kernels without CMake or a CUDA libtorch:
#   - each native/cuda/*.cu to an object for sm_70, sm_80 and sm_90 (warnings are errors);
#   - glue_cuda.cpp with g++ -c against the libtorch and CUDA headers (compiled, not linked: that needs a CUDA
#     build of libtorch);
#   - the standalone test (tests/attention_cuda_test.cu), built and run; without a GPU it reports
#     "no CUDA device: compiled, not run" and that counts as success.
# Ends with one summary line; exit status 0 only when everything compiled and the test (if it ran) passed.
#
#   native/cuda/check.sh            check (and say how to install nvcc when it is missing)
#   native/cuda/check.sh --install  install Debian's nvidia-cuda-toolkit first when nvcc is missing
# Environment: NVCC (the compiler), CUDA_HOST_CXX (nvcc's host compiler), CXX (for the glue, default g++).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SRC=native/cuda
OUT=build/cuda-check
# Wanted architectures (CUDA_ARCHS overrides, e.g. CUDA_ARCHS="90"); those the found nvcc does not know are dropped below
# (CUDA 13 no longer builds sm_70).
read -r -a ARCHS <<<"${CUDA_ARCHS:-70 80 90}"

install=0
for arg in "$@"; do
  case "$arg" in
    --install) install=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '==> %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

find_nvcc() {
  local c
  for c in "${NVCC:-}" "$(command -v nvcc 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" /usr/local/cuda/bin/nvcc; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  return 1
}

# Debian ships nvcc as nvidia-cuda-toolkit in the non-free component (CUDA 11.8 on bookworm).
install_toolkit() {
  log "installing nvidia-cuda-toolkit from Debian non-free (apt)"
  local list=/etc/apt/sources.list.d/sharplens-non-free.sources
  if ! grep -rqsE "non-free([^-]|$)" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
      as_root tee "$list" >/dev/null || return 1
  fi
  as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit
}

NVCC_BIN=$(find_nvcc)
if [ -z "$NVCC_BIN" ] && [ $install -eq 1 ]; then
  install_toolkit || { echo "cuda check: installing nvidia-cuda-toolkit failed" >&2; exit 1; }
  NVCC_BIN=$(find_nvcc)
fi
if [ -z "$NVCC_BIN" ]; then
  cat >&2 <<'EOF'
nvcc not found. On Debian bookworm, enable the contrib and non-free components and install the toolkit, e.g.:
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    | sudo tee /etc/apt/sources.list.d/non-free.sources
  sudo apt-get update && sudo apt-get install --no-install-recommends nvidia-cuda-toolkit
(or run native/cuda/check.sh --install, or point NVCC at an NVIDIA CUDA toolkit's bin/nvcc).
EOF
  echo "cuda check: nothing compiled (no nvcc)"
  exit 1
fi
NVCC_VERSION=$("$NVCC_BIN" --version | sed -n 's/.*release \([0-9.]*\), V\([0-9.]*\).*/\2/p')
mkdir -p "$OUT"
# Keep the wanted architectures this nvcc supports (--list-gpu-arch: compute_NN per line).
if supported=$("$NVCC_BIN" --list-gpu-arch 2>/dev/null) && [ -n "$supported" ]; then
  kept=()
  for a in "${ARCHS[@]}"; do
    if grep -qx "compute_$a" <<<"$supported"; then kept+=("$a"); else log "nvcc $NVCC_VERSION does not support sm_$a: skipped"; fi
  done
  ARCHS=("${kept[@]}")
fi
if [ ${#ARCHS[@]} -eq 0 ]; then
  echo "cuda check: nvcc $NVCC_VERSION supports none of the wanted architectures (${CUDA_ARCHS:-70 80 90}); set CUDA_ARCHS"
  exit 1
fi

# nvcc only accepts host compilers up to a version (gcc 11 and clang 14 for CUDA 11.8): take the first candidate
# that compiles a probe, so a newer default g++ does not stop the check.
probe="$OUT/probe.cu"
printf '#include <cuda_runtime.h>\n__global__ void probe(float* x) { x[threadIdx.x] = 1; }\nint main() { probe<<<1, 1>>>(nullptr); return 0; }\n' >"$probe"
HOST_CXX=""
for c in ${CUDA_HOST_CXX:-} g++-11 g++-10 clang++-14 clang++-13 g++-12 clang++-15 g++ clang++; do
  command -v "$c" >/dev/null || continue
  if "$NVCC_BIN" -std=c++17 -ccbin "$c" -c "$probe" -o "$OUT/probe.o" >"$OUT/probe.log" 2>&1; then HOST_CXX=$c; break; fi
done
if [ -z "$HOST_CXX" ]; then
  cat "$OUT/probe.log" >&2
  echo "cuda check: nvcc $NVCC_VERSION accepts none of the host compilers here (install g++-11, or set CUDA_HOST_CXX)"
  exit 1
fi
log "nvcc $NVCC_VERSION ($NVCC_BIN), host compiler $HOST_CXX ($("$HOST_CXX" --version | head -1))"

GENCODE=()
for a in "${ARCHS[@]}"; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); done
# PTX for the newest architecture too, so later GPUs can JIT-compile the kernels.
GENCODE+=(-gencode "arch=compute_${ARCHS[-1]},code=compute_${ARCHS[-1]}")
# -ffp-contract=off for the host code: the rotary and LayerNorm host emulation must round op by op as the device code
# does (on aarch64, or with -mfma, the host compiler would otherwise fuse a*b+c).
NVCC_FLAGS=(-std=c++17 -O3 -ccbin "$HOST_CXX" "${GENCODE[@]}" --threads 0 -Werror all-warnings
  -Xcompiler -Wall,-Wextra,-Werror,-ffp-contract=off -I "$SRC")

failed=()
compiled=()
compile_cu() {  # source object
  log "nvcc $1"
  if "$NVCC_BIN" "${NVCC_FLAGS[@]}" -c "$1" -o "$2"; then compiled+=("$(basename "$1")"); else failed+=("$(basename "$1")"); fi
}
compile_cu "$SRC/attention_cuda.cu" "$OUT/attention_cuda.o"
compile_cu "$SRC/qkv_split_cuda.cu" "$OUT/qkv_split_cuda.o"
compile_cu "$SRC/rotary_cuda.cu" "$OUT/rotary_cuda.o"
compile_cu "$SRC/layer_norm_cuda.cu" "$OUT/layer_norm_cuda.o"
compile_cu "$SRC/tests/attention_cuda_test.cu" "$OUT/attention_cuda_test.o"

# The glue: libtorch's headers plus the CUDA runtime headers next to nvcc (Debian puts them in /usr/include).
CXX_BIN=${CXX:-g++}
CUDA_INCLUDE=$(cd "$(dirname "$NVCC_BIN")/.." && pwd)/include
[ -f "$CUDA_INCLUDE/cuda_runtime_api.h" ] || CUDA_INCLUDE=/usr/include
# Warnings are errors in our code only: libtorch's and CUDA's headers are system headers (-isystem), whose own
# warnings (unused parameters in libtorch 2.x's c10/cuda headers) are not ours to fix.
GLUE_FLAGS=(-std=c++17 -O2 -fPIC -Wall -Wextra -Werror -I "$SRC")
if [ -n "${SHARPLENS_LIBTORCH:-}" ]; then
  GLUE_FLAGS+=(-isystem "$SHARPLENS_LIBTORCH/include" -isystem "$SHARPLENS_LIBTORCH/include/torch/csrc/api/include")
fi
# Debian's libtorch 1.13 only when no other libtorch was named: a header missing from a 2.x tree must fail, not
# silently come from 1.13.
[ -z "${SHARPLENS_LIBTORCH:-}" ] && GLUE_FLAGS+=(-isystem /usr/include/torch/csrc/api/include)
# /usr/include is a system directory already; naming it again with -isystem would reorder it after libstdc++'s own
# headers and break their #include_next (Debian's CUDA headers live there).
[ "$CUDA_INCLUDE" != /usr/include ] && GLUE_FLAGS+=(-isystem "$CUDA_INCLUDE")
# A CPU-only libtorch ships the c10/cuda headers without the header CMake generates for them; a CUDA build has it.
if ! echo '#include <c10/cuda/impl/cuda_cmake_macros.h>' | "$CXX_BIN" "${GLUE_FLAGS[@]}" -x c++ -fsyntax-only - 2>/dev/null; then
  GLUE_FLAGS+=(-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE)
fi
log "$CXX_BIN -c $SRC/glue_cuda.cpp"
if "$CXX_BIN" "${GLUE_FLAGS[@]}" -c "$SRC/glue_cuda.cpp" -o "$OUT/glue_cuda.o"; then compiled+=(glue_cuda.cpp); else failed+=(glue_cuda.cpp); fi
# The CPU kernels' dispatch to the glue (their SHARPLENS_WITH_CUDA branches), which no CPU build compiles.
ROOT_DIR=$(cd "$SRC/../.." && pwd)
for dispatcher in attention_cpu.cpp qkv_heads.cpp rotary_cpu.cpp layer_norm_cpu.cpp; do
  log "$CXX_BIN -fsyntax-only -DSHARPLENS_WITH_CUDA native/src/kernels/$dispatcher"
  if "$CXX_BIN" "${GLUE_FLAGS[@]}" -Wno-unused-parameter -DSHARPLENS_WITH_CUDA -I "$ROOT_DIR/native/src" -I "$ROOT_DIR/native/include" \
      -fsyntax-only "$ROOT_DIR/native/src/kernels/$dispatcher"; then compiled+=("$dispatcher+cuda"); else failed+=("$dispatcher+cuda"); fi
done

test_status="not built"
if [ ${#failed[@]} -eq 0 ]; then
  log "linking and running $OUT/attention_cuda_test"
  if "$NVCC_BIN" -ccbin "$HOST_CXX" "${GENCODE[@]}" "$OUT/attention_cuda_test.o" "$OUT/attention_cuda.o" \
      "$OUT/qkv_split_cuda.o" "$OUT/rotary_cuda.o" "$OUT/layer_norm_cuda.o" -o "$OUT/attention_cuda_test"; then
    "$OUT/attention_cuda_test" | tee "$OUT/attention_cuda_test.log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then test_status="FAILED (exit $rc, see $OUT/attention_cuda_test.log)"; failed+=(test)
    elif grep -q "no CUDA device" "$OUT/attention_cuda_test.log"; then test_status="built; host emulation of the rotary, LayerNorm and RMSNorm kernels passed, device kernels not run (no CUDA device)"
    else test_status="ran and passed"; fi
  else
    failed+=("test link")
  fi
fi

arch_list=$(printf 'sm_%s ' "${ARCHS[@]}")
summary="cuda check: nvcc $NVCC_VERSION with host $HOST_CXX; compiled ${compiled[*]:-nothing} (.cu for ${arch_list% }, glue with $CXX_BIN -c); test $test_status"
if [ ${#failed[@]} -gt 0 ]; then
  echo "$summary; FAILED: ${failed[*]}"
  exit 1
fi
echo "$summary"
