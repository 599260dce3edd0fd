#!/usr/bin/env bash
# SharpLens build entry point.
#   ./build.sh          install what is missing, build native (CMake) and managed (dotnet) in Release
#   ./build.sh test     build, then run every test suite; ends with "N passed, N failed"
#   ./build.sh bench    build, then run the BenchmarkDotNet suite and write perf/results/summary.md
#   ./build.sh pack [DIR]  build, then write the NuGet packages SharpLens.Torch (with libsharplens.so) and SharpLens
#                       to a local feed folder, DIR or build/feed (the version is Directory.Build.props's)
#   ./build.sh demo     build, then run `lens demo` (train a small model, find its induction heads; options pass through)
#   ./build.sh gpu-bundle  build, then pack what a GPU machine without .NET or BLAS needs into build/gpu-bundle
#   ./build.sh gpu-check   on a GPU machine: build with the CUDA kernels against a CUDA libtorch, run the CUDA tests,
#                          lens verify and lens bench on the GPU, write one JSON (see gpu_check below)
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

# Everything a GPU machine without .NET or a system BLAS needs besides the sources (the H200 machine of 2026-12-04 had
# neither: no SDK, no libblas.so.3), in one folder, build/gpu-bundle (about 35 MB): this SDK's .NET runtime (dotnet-runtime.tar.xz), the BLAS libraries libsharplens's
# CPU kernels link (blas.tar.xz) and the managed build, lens and the test assembly (managed.tar.xz). Carry that folder
# with the sources and run ./build.sh gpu-check there: it unpacks what the machine lacks.
gpu_bundle() {
  build_all
  local dir="$ROOT/build/gpu-bundle" dotnet_root fx
  rm -rf "$dir" && mkdir -p "$dir/blas"
  dotnet_root=$(dirname "$(readlink -f "$(command -v dotnet)")")
  fx=$(ls -d "$dotnet_root"/shared/Microsoft.NETCore.App/*/ | sort -V | tail -1)
  log "gpu-bundle: .NET runtime $(basename "$fx") from $dotnet_root"
  tar -C "$dotnet_root" -cJf "$dir/dotnet-runtime.tar.xz" dotnet host/fxr "shared/Microsoft.NETCore.App/$(basename "$fx")"
  local lib
  for lib in libblas.so.3 libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
    local path; path=$(ldd "$NATIVE_BUILD/libsharplens.so" | awk -v l="$lib" '$1 == l {print $3}')
    [ -n "$path" ] || { echo "gpu-bundle: libsharplens.so does not link $lib here (ldd)" >&2; exit 1; }
    cp -L "$path" "$dir/blas/$lib"
  done
  tar -C "$dir" -cJf "$dir/blas.tar.xz" blas && rm -rf "$dir/blas"
  tar -C "$ROOT" -cJf "$dir/managed.tar.xz" managed/SharpLens.Cli/bin/Release tests/SharpLens.Tests/bin/Release
  du -sh "$dir"/* >&2
  log "gpu-bundle: $(du -sh "$dir" | cut -f1) in $dir"
}

# Unpacks what build/gpu-bundle holds and this machine lacks: a .NET runtime when there is no dotnet, the BLAS libraries
# when the system has no libblas.so.3 (and SHARPLENS_BLAS is not set), and the managed build when it is not here.
use_gpu_bundle() {
  local dir="$ROOT/build/gpu-bundle"
  [ -d "$dir" ] || return 0
  if ! command -v dotnet >/dev/null && [ -f "$dir/dotnet-runtime.tar.xz" ]; then
    mkdir -p "$dir/dotnet" && tar -C "$dir/dotnet" -xJf "$dir/dotnet-runtime.tar.xz"
    export DOTNET_ROOT="$dir/dotnet" PATH="$dir/dotnet:$PATH"
    log "gpu-check: .NET runtime from the bundle ($(dotnet --list-runtimes | head -1))"
  fi
  if [ -z "${SHARPLENS_BLAS:-}" ] && ! ldconfig -p 2>/dev/null | grep 'libblas\.so\.3 ' >/dev/null && [ -f "$dir/blas.tar.xz" ]; then
    tar -C "$dir" -xJf "$dir/blas.tar.xz"
    export SHARPLENS_BLAS="$dir/blas/libblas.so.3" LD_LIBRARY_PATH="$dir/blas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    log "gpu-check: BLAS from the bundle ($SHARPLENS_BLAS)"
  fi
  if [ ! -f "$ROOT/managed/SharpLens.Cli/bin/Release/net10.0/lens.dll" ] && [ -f "$dir/managed.tar.xz" ]; then
    tar -C "$ROOT" -xJf "$dir/managed.tar.xz"
    log "gpu-check: managed build from the bundle"
  fi
}

# On a machine with an NVIDIA GPU: finds a CUDA libtorch (SHARPLENS_LIBTORCH, Torch_DIR, or the one inside a Python
# PyTorch), builds libsharplens with the CUDA kernels for the GPU's architecture, runs the standalone CUDA kernel test,
# the CUDA test subset (SharpLens.Tests.dll run by its own entry point, so a .NET runtime is enough), lens verify
# --device cuda on every fixture and lens bench --device cuda (GPT-2-small shape: 4 x 128 float32 and 8 x 1024
# bfloat16), and writes everything to one JSON (build/gpu-check/gpu-check.json; or the path given), the logs beside it
# in build/gpu-check. Needs nvcc and nvidia-smi; .NET, BLAS and the managed build come from build/gpu-bundle where the
# machine has none (./build.sh gpu-bundle makes it on a development machine).
gpu_check() {
  local out_json="${1:-$ROOT/build/gpu-check/gpu-check.json}" out_dir="$ROOT/build/gpu-check" started=$SECONDS
  mkdir -p "$out_dir" "$(dirname "$out_json")"
  command -v nvidia-smi >/dev/null || { echo "gpu-check: nvidia-smi not found: this machine has no NVIDIA driver" >&2; exit 1; }
  use_gpu_bundle
  local torch_dir="${Torch_DIR:-}"
  [ -z "$torch_dir" ] && [ -n "${SHARPLENS_LIBTORCH:-}" ] && torch_dir="$SHARPLENS_LIBTORCH/share/cmake/Torch"
  if [ -z "$torch_dir" ] && command -v python3 >/dev/null; then
    torch_dir=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path + "/Torch")' 2>/dev/null || true)
    local torch_lib
    torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)
    [ -n "$torch_lib" ] && export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  [ -n "$torch_dir" ] && [ -f "$torch_dir/TorchConfig.cmake" ] || {
    echo "gpu-check: no CUDA libtorch found: set SHARPLENS_LIBTORCH (or Torch_DIR), or install PyTorch with CUDA for python3" >&2; exit 1; }
  local cap arch
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
  arch=${CUDA_ARCHS:-${cap/./}}
  log "gpu-check: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), sm_$arch, Torch_DIR=$torch_dir"
  local build_dir="$ROOT/build/native-cuda"
  local cmake_args=(-S "$ROOT" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DTorch_DIR="$torch_dir" -DSHARPLENS_CUDA=ON
    -DCMAKE_CUDA_ARCHITECTURES="${arch// /;}")
  command -v ninja >/dev/null && cmake_args+=(-G Ninja)
  [ -n "${SHARPLENS_BLAS:-}" ] && cmake_args+=(-DSHARPLENS_BLAS="$SHARPLENS_BLAS")
  cmake "${cmake_args[@]}" >"$out_dir/cmake.log" 2>&1 || { tail -20 "$out_dir/cmake.log"; echo "gpu-check: configure failed" >&2; exit 1; }
  cmake --build "$build_dir" -j"$(nproc)" >"$out_dir/build.log" 2>&1 || { tail -30 "$out_dir/build.log"; echo "gpu-check: build failed" >&2; exit 1; }
  export SHARPLENS_NATIVE="$build_dir/libsharplens.so"
  local kernel_test
  kernel_test=$(CUDA_ARCHS="$arch" SHARPLENS_LIBTORCH="${SHARPLENS_LIBTORCH:-$(cd "$torch_dir/../../.." && pwd)}" "$ROOT/native/cuda/check.sh" 2>"$out_dir/cuda-check.log" | tail -1 || true)
  log "$kernel_test"
  command -v dotnet >/dev/null || { echo "gpu-check: no dotnet here: carry build/gpu-bundle (./build.sh gpu-bundle)" >&2; exit 1; }
  if dotnet --list-sdks 2>/dev/null | grep -q .; then
    dotnet build "$ROOT/Engine.sln" -c Release -nologo -v quiet -clp:ErrorsOnly >"$out_dir/dotnet-build.log" 2>&1 ||
      { tail -20 "$out_dir/dotnet-build.log"; echo "gpu-check: dotnet build failed" >&2; exit 1; }
  fi
  local tests test_dll="$ROOT/tests/SharpLens.Tests/bin/Release/net10.0/SharpLens.Tests.dll"
  [ -f "$test_dll" ] || { echo "gpu-check: $test_dll is missing: build the managed side (./build.sh) or carry build/gpu-bundle" >&2; exit 1; }
  dotnet "$test_dll" --category CUDA >"$out_dir/cuda-tests.log" 2>&1 || true
  tests=$(tail -1 "$out_dir/cuda-tests.log")
  log "CUDA tests: $tests"
  local lens="$ROOT/managed/SharpLens.Cli/bin/Release/net10.0/lens.dll" verify=() bench=()
  [ -f "$lens" ] || { echo "gpu-check: $lens is missing: build the managed side (./build.sh) and carry it here" >&2; exit 1; }
  for fixture in "$ROOT"/tests/fixtures/tiny-*; do
    local name; name=$(basename "$fixture")
    for dtype in float32 float64; do
      local rc=0
      dotnet "$lens" verify "$fixture" --dtype "$dtype" --device cuda --json "$out_dir/verify-$name-$dtype.json" >"$out_dir/verify-$name-$dtype.log" 2>&1 || rc=$?
      verify+=("\"$name/$dtype\": $([ $rc -eq 0 ] && echo '"passed"' || echo '"FAILED"')")
    done
  done
  local run dtype batch seq
  for run in "float32 4 128" "bfloat16 8 1024"; do
    read -r dtype batch seq <<<"$run"
    rm -f "$out_dir/bench-$dtype-${batch}x$seq.json"  # a failed run must not report an earlier run's figures
    dotnet "$lens" bench --arch gpt2 --device cuda --dtype "$dtype" --batch "$batch" --seq "$seq" --reps 10 \
      --json "$out_dir/bench-$dtype-${batch}x$seq.json" >"$out_dir/bench-$dtype-${batch}x$seq.log" 2>&1 || true
    bench+=("\"gpt2 $dtype ${batch}x$seq\": $(cat "$out_dir/bench-$dtype-${batch}x$seq.json" 2>/dev/null || echo '"failed: see log"')")
  done
  # The 8 x 1024 bfloat16 forward's matrix throughput as a fraction of the GPU's dense bf16 peak (SHARPLENS_GPU_PEAK_TFLOPS;
  # the default is an H200's, about 790 TFLOP/s).
  local peak="${SHARPLENS_GPU_PEAK_TFLOPS:-790}" achieved fraction="null"
  achieved=$(grep -o '"forward_tflop_per_s": *[0-9.eE+-]*' "$out_dir/bench-bfloat16-8x1024.json" 2>/dev/null | awk '{print $2}' || true)
  [ -n "$achieved" ] && fraction=$(awk -v t="$achieved" -v p="$peak" 'BEGIN { printf "%.4f", t / p }')
  {
    echo "{"
    echo "  \"gpu\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)\", \"sm\": \"$arch\", \"torch_dir\": \"$torch_dir\","
    echo "  \"cuda_kernel_test\": \"${kernel_test//\"/\'}\", \"cuda_tests\": \"${tests//\"/\'}\","
    echo "  \"verify\": { $(IFS=,; echo "${verify[*]}") },"
    echo "  \"bench\": { $(IFS=,; echo "${bench[*]}") },"
    echo "  \"bf16_peak_tflops\": $peak, \"forward_8x1024_bf16_fraction_of_peak\": $fraction,"
    echo "  \"seconds\": $((SECONDS - started))"
    echo "}"
  } >"$out_json"
  log "gpu-check: wrote $out_json in $((SECONDS - started)) s"
}

case "${1:-build}" in
  build) build_all ;;
  test) run_tests ;;
  bench) shift; run_bench "$@" ;;
  pack) shift; build_all; pack_packages "$@" ;;
  demo) shift; build_all; dotnet "$ROOT/managed/SharpLens.Cli/bin/Release/net10.0/lens.dll" demo "$@" ;;
  cuda-check) shift; "$ROOT/native/cuda/check.sh" "$@" ;;
  gpu-check) shift; gpu_check "$@" ;;
  gpu-bundle) gpu_bundle ;;
  *) echo "usage: ./build.sh [build|test|bench|pack [DIR]|demo|cuda-check|gpu-bundle|gpu-check [OUT.json]]" >&2; exit 2 ;;
esac
