#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) into build-fuzz and runs each for a bounded
# time on a scratch copy of its seed corpus (the checked-in corpus does not grow):
#   tests/fuzz/run_fuzzers.sh [seconds per target, default 60]
# Fails on any crash, sanitizer report or timeout; the reproducer is kept in build-fuzz/findings.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-60}
packages=(clang libclang-rt-14-dev)
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
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S tests/fuzz -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ --log-level=WARNING
cmake --build build-fuzz --parallel "${JOBS:-$(nproc)}"

status=0
mkdir -p build-fuzz/findings
for target in npy safetensors manifest; do
  scratch=build-fuzz/corpus-$target
  rm -rf "$scratch"
  cp -r "tests/fuzz/corpus/$target" "$scratch"
  log=build-fuzz/fuzz_$target.log
  if build-fuzz/fuzz_$target -max_total_time="$seconds" -max_len=8192 -timeout=10 \
       -rss_limit_mb=2048 -artifact_prefix="build-fuzz/findings/$target-" \
       -dict="tests/fuzz/$target.dict" "$scratch" > "$log" 2>&1; then
    echo "fuzz_$target: $(grep -E '^Done' "$log" | tail -1), $(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)"
  else
    echo "fuzz_$target: FAILED (see $log; reproducer in build-fuzz/findings/)" >&2
    tail -30 "$log" >&2
    status=1
  fi
done
exit $status
