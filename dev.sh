#!/usr/bin/env bash
# The one entry point for a fresh Debian 12 machine:
#   ./dev.sh run    install what is missing, configure, build, run the demo
#   ./dev.sh test   install what is missing, configure, build, run the whole test suite
# Environment: BUILD_DIR (default build), CROSSCODER_CUDA (AUTO|ON|OFF, default AUTO),
# CROSSCODER_SANITIZE (e.g. address,undefined: builds into build-sanitize with CUDA off),
# JOBS (default: number of cores), CROSSCODER_PYTHON_TESTS (0: no Python tests),
# CROSSCODER_PYTHON_MODELS (1: also install torch and transformers for the dumper's test).
set -euo pipefail
cd "$(dirname "$0")"

mode=${1:-}
if [[ "$mode" != run && "$mode" != test ]]; then
  echo "usage: ./dev.sh run|test" >&2
  exit 2
fi
shift || true

packages=(cmake make g++ pkg-config libeigen3-dev libfmt-dev nlohmann-json3-dev libcli11-dev
          libgtest-dev libgmock-dev libbenchmark-dev libopenblas-openmp-dev libopenmpi-dev
          openmpi-bin)

install_missing_packages() {
  local missing=()
  for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
  if ((${#missing[@]} == 0)); then return; fi
  echo "dev.sh: installing ${missing[*]}"
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
}

# The test suite also renders the HTML report in a headless browser, and its Python interop
# tests need python3 with venv.
if [[ "$mode" == test ]]; then packages+=(chromium python3 python3-venv); fi

install_missing_packages

jobs=${JOBS:-$(nproc)}
cuda=${CROSSCODER_CUDA:-AUTO}
sanitize=${CROSSCODER_SANITIZE:-}
build_dir=${BUILD_DIR:-build}
configure_args=(-DCMAKE_BUILD_TYPE=Release)
if [[ -n "$sanitize" ]]; then
  # CUDA's runtime and the sanitizers do not mix; the ordinary build compiles the CUDA sources.
  build_dir=${BUILD_DIR:-build-sanitize}
  cuda=OFF
  # GCC 12 misreports its own AVX-512 intrinsics as uninitialised under the sanitizers, so the
  # sanitizer build targets the baseline CPU.
  configure_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCROSSCODER_SANITIZE=$sanitize"
                  -DCROSSCODER_NATIVE_ARCH=OFF)
fi
if [[ -n "${CI:-}" ]]; then configure_args+=(-DCROSSCODER_WARNINGS_AS_ERRORS=ON); fi

# The Python package's extension is built with the project's virtual environment (nanobind
# comes from scripts/setup_python.sh), so test mode makes that environment before configuring:
# numpy, safetensors, nanobind and pytest (seconds); with CROSSCODER_PYTHON_MODELS=1 also torch
# and transformers (minutes, several GB). CROSSCODER_PYTHON_TESTS=0 skips Python entirely.
python_ready=0
if [[ "$mode" == test && "${CROSSCODER_PYTHON_TESTS:-1}" != 0 ]]; then
  python_args=()
  if [[ "${CROSSCODER_PYTHON_MODELS:-0}" == 1 ]]; then python_args+=(--with-torch); fi
  if scripts/setup_python.sh "${python_args[@]}"; then
    python_ready=1
  else
    echo "dev.sh: warning: scripts/setup_python.sh failed; the python tests will be skipped" >&2
  fi
fi
if [[ -n "$sanitize" ]]; then
  configure_args+=(-DCROSSCODER_PYTHON_PACKAGE=OFF)
elif ((python_ready)) || [[ -x .venv/bin/python ]]; then
  configure_args+=("-DPython_EXECUTABLE=$PWD/.venv/bin/python")
fi

cmake -S . -B "$build_dir" "-DCROSSCODER_CUDA=$cuda" "${configure_args[@]}"
cmake --build "$build_dir" --parallel "$jobs"

case "$mode" in
  run)
    "$build_dir/bin/crosscoder" backends
    "$build_dir/bin/crosscoder" demo "$@"
    ;;
  test)
    # ctest runs tests side by side, each with an OpenMP team as wide as the machine: idle
    # OpenMP threads must sleep rather than spin, or the oversubscribed cores crawl (the demo
    # test ran 10× slower beside another test with spinning threads).
    export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
    export ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    ctest --test-dir "$build_dir" --output-on-failure --parallel "$jobs" "$@"
    ;;
esac
