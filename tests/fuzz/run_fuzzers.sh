#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan; the top-level project with
# CROSSCODER_FUZZ=ON) into build-fuzz and runs each for a bounded time on a scratch copy of its
# seed corpus, so that the checked-in corpus does not grow:
#   tests/fuzz/run_fuzzers.sh [seconds per target, default 60]
# Installs Debian's clang and libclang-rt-14-dev when missing. Fails on any crash, sanitizer
# report, uncaught exception other than crosscoder::Error, timeout (10 s) or 2 GB of memory; the
# reproducer is kept in build-fuzz/findings/ (rerun it with build-fuzz/tests/fuzz/fuzz_TARGET FILE).
# Environment: JOBS (parallel build jobs, default: number of cores), FUZZ_BUILD_DIR (build-fuzz).
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-60}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: tests/fuzz/run_fuzzers.sh [seconds per target, default 60]" >&2
  exit 2
fi
build=${FUZZ_BUILD_DIR:-build-fuzz}

packages=(clang libclang-rt-14-dev cmake make libfmt-dev nlohmann-json3-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if ((${#missing[@]} > 0)); then
  echo "run_fuzzers.sh: installing ${missing[*]}"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
fi

# A build folder configured from elsewhere (older layouts used tests/fuzz) is started afresh.
if [[ -f "$build/CMakeCache.txt" ]] &&
   ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$PWD" "$build/CMakeCache.txt"; then
  rm -rf "$build/CMakeCache.txt" "$build/CMakeFiles"
fi
configure_args=(-DCROSSCODER_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo)
if [[ -n "${CI:-}" ]]; then configure_args+=(-DCROSSCODER_WARNINGS_AS_ERRORS=ON); fi
started=$SECONDS
cmake -S . -B "$build" "${configure_args[@]}" --log-level=WARNING
cmake --build "$build" --parallel "${JOBS:-$(nproc)}"
echo "run_fuzzers.sh: built in $((SECONDS - started)) s; fuzzing each target for ${seconds} s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
mkdir -p "$build/findings"
for target in npy safetensors manifest vocabulary; do
  scratch=$build/corpus-$target
  rm -rf "$scratch"
  cp -r "tests/fuzz/corpus/$target" "$scratch"
  log=$build/fuzz_$target.log
  if "$build/tests/fuzz/fuzz_$target" -max_total_time="$seconds" -max_len=8192 -timeout=10 \
       -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build/findings/$target-" \
       -dict="tests/fuzz/$target.dict" "$scratch" > "$log" 2>&1; then
    # libFuzzer's last status line: "#N DONE cov: C ft: F corp: K/S lim: L exec/s: E rss: R".
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)
    execs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<< "$done_line")
    echo "fuzz_$target: ok, $execs execs in ${seconds} s" \
         "($(grep -oE 'exec/s: [0-9]+' <<< "$done_line")," \
         "$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' <<< "$done_line"))"
  else
    echo "fuzz_$target: FAILED (log: $log; reproducer: $build/findings/$target-*)" >&2
    grep -E 'ERROR|runtime error|SUMMARY|Test unit written' "$log" >&2 || tail -30 "$log" >&2
    status=1
  fi
done
exit $status
