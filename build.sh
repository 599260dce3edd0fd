#!/usr/bin/env bash
# SharpLens build entry point.
#   ./build.sh          install what is missing, build native (CMake) and managed (dotnet) in Release
#   ./build.sh test     build, then run every test suite; ends with "N passed, N failed"
#   ./build.sh bench    build, then run the BenchmarkDotNet suite and write perf/results/summary.md
#   ./build.sh pack [DIR]  build, then write the NuGet packages SharpLens.Torch (with libsharplens.so) and SharpLens
#                       to a local feed folder, DIR or build/feed (the version is Directory.Build.props's)
#   ./build.sh demo     build, then run `lens demo` (train a small model, find its induction heads; options pass through)
#   ./build.sh cuda-check  compile the CUDA kernels with nvcc (no GPU or CUDA libtorch needed; --install fetches
#                          Debian's nvidia-cuda-toolkit) and run their standalone test where a GPU is present
# Environment: SHARPLENS_LIBTORCH or Torch_DIR select another libtorch (e.g. a CUDA build);
# SHARPLENS_NUM_THREADS sets libtorch's intra-op threads (default: all cores).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
NATIVE_BUILD="$ROOT/build/native"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; exit 1; fi
}

# Installs the Debian packages the build needs, once, and only what is missing.
ensure_dependencies() {
  local missing=()
  if [ -z "${SHARPLENS_LIBTORCH:-}" ] && [ -z "${Torch_DIR:-}" ] && \
     [ ! -f /usr/lib/x86_64-linux-gnu/cmake/Torch/TorchConfig.cmake ]; then missing+=(libtorch-dev); fi
  # OpenBLAS matters: the reference BLAS Debian falls back to is ten times slower.
  dpkg -s libopenblas0-openmp >/dev/null 2>&1 || missing+=(libopenblas0-openmp)
  # Gloo's headers: Debian's libtorch has torch.distributed (c10d + Gloo) but ships Gloo's headers separately.
  if [ -z "${SHARPLENS_LIBTORCH:-}" ] && [ -z "${Torch_DIR:-}" ]; then dpkg -s libgloo-dev >/dev/null 2>&1 || missing+=(libgloo-dev); fi
  command -v cmake >/dev/null || missing+=(cmake)
  command -v g++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  command -v dotnet >/dev/null || { echo "the .NET 10 SDK (dotnet) is required and not on PATH" >&2; exit 1; }
}

build_native() {
  log "native: CMake, Release"
  local args=(-S "$ROOT" -B "$NATIVE_BUILD" -DCMAKE_BUILD_TYPE=Release)
  if [ -n "${SHARPLENS_LIBTORCH:-}" ]; then args+=("-DTorch_DIR=$SHARPLENS_LIBTORCH/share/cmake/Torch"); fi
  if [ -n "${Torch_DIR:-}" ]; then args+=("-DTorch_DIR=$Torch_DIR"); fi
  cmake "${args[@]}" >/dev/null
  cmake --build "$NATIVE_BUILD" -j"$(nproc)"
}

build_managed() {
  log "managed: dotnet build Engine.sln, Release"
  dotnet build "$ROOT/Engine.sln" -c Release -nologo -v quiet -clp:ErrorsOnly
}

build_all() {
  ensure_dependencies
  build_native
  build_managed
}

# Runs every NUnit suite of the solution and prints one summary line over all of them.
run_tests() {
  build_all
  log "tests"
  local out="$ROOT/build/test-output.txt" rc=0
  dotnet test "$ROOT/Engine.sln" -c Release --no-build -nologo 2>&1 | tee "$out" || rc=$?
  local passed failed
  passed=$(grep -Eo 'Passed: +[0-9]+' "$out" | awk '{s+=$2} END {print s+0}')
  failed=$(grep -Eo 'Failed: +[0-9]+' "$out" | awk '{s+=$2} END {print s+0}')
  if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi  # a crashed test host counts as a failure
  echo "$passed passed, $failed failed"
  [ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
}

# The NuGet packages of the two libraries in a local feed folder (PackageTests packs the same way into its own).
pack_packages() {
  local out="${1:-$ROOT/build/feed}"
  log "packages: SharpLens.Torch, SharpLens -> $out"
  local project
  for project in managed/SharpLens.Torch/SharpLens.Torch.csproj managed/SharpLens/SharpLens.csproj; do
    dotnet pack "$ROOT/$project" -c Release --no-build -nologo -v quiet -o "$out"
  done
  ls -1 "$out"/*.nupkg
}

run_bench() {
  build_all
  log "benchmarks (BenchmarkDotNet)"
  dotnet run -c Release --project "$ROOT/perf/SharpLens.Perf" -- --summary "$ROOT/perf/results/summary.md" "$@"
}

case "${1:-build}" in
  build) build_all ;;
  test) run_tests ;;
  bench) shift; run_bench "$@" ;;
  pack) shift; build_all; pack_packages "$@" ;;
  demo) shift; build_all; dotnet "$ROOT/managed/SharpLens.Cli/bin/Release/net10.0/lens.dll" demo "$@" ;;
  cuda-check) shift; "$ROOT/native/cuda/check.sh" "$@" ;;
  *) echo "usage: ./build.sh [build|test|bench|pack [DIR]|demo|cuda-check]" >&2; exit 2 ;;
esac
