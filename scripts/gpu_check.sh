#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step_* functions run through "$self" __step, which shellcheck cannot follow
# The CUDA backend's checks on a GPU host (docs/performance-cuda.md, "Running the checks"), in
# two runs that each fit one call of a device lease:
#
#   scripts/gpu_check.sh [OPTIONS] BUNDLE OUT_DIR first|second     (or --run 1|2)
#
# first  (estimated 3-5 minutes): the ldd check (libcudart, libcublas, libcublasLt, libcurand
#        found), `crosscoder backends`, the CUDA-parameterised tests and the training parity
#        suite, compute-sanitizer memcheck on the CUDA ops, selections and numerics, racecheck
#        and synccheck on the selections.
# second (estimated 3-4 minutes without the full shape): the ldd check and `crosscoder backends`
#        again (a later call may get a fresh machine), bench_cuda filtered to one repetition
#        (JSON), the PyTorch comparison's equivalence check (--check), its timing at the
#        reference shape, and at the full shape only if enough of the run's budget remains.
#
# BUNDLE comes from scripts/gpu_bundle.sh. Every step runs under coreutils `timeout`, with the
# smaller of its own limit and what is left of the run's budget, so one hung step cannot take
# the run's time; its log is OUT_DIR/runN/STEP.log and its wall time is printed. After every
# step the logs so far are packed into ARCHIVE_DIR/gpu-check-runN.tar.gz (one file to bring
# back; ARCHIVE_DIR defaults to OUT_DIR), with summary.txt beside it.
#
# Options (or environment variables):
#   --run 1|2                the run, instead of the third argument
#   --budget SECONDS         the whole run's time (GPU_CHECK_BUDGET; default 330 first, 300 second)
#   --archive-dir DIR        where the archive and summary.txt go (GPU_CHECK_ARCHIVE_DIR)
#   --force                  run the CUDA steps even when `crosscoder backends` finds no usable
#                            CUDA device (GPU_CHECK_FORCE=1; to exercise the script without a GPU)
#   BENCH_FILTER=REGEX       bench_cuda's --benchmark_filter (default below)
#   CUDA_LIB_DIR=DIR         the host toolkit's libraries (default: /usr/local/cuda/lib64, or
#                            the lib64 beside nvcc)
#
# Exit status: 0 every required step passed (the full-shape timing may have been skipped for
# time); 1 a step failed or timed out, or no usable CUDA device; 2 usage; 3 nothing failed but a
# required step was skipped for lack of time.
#
# The C++ programs run with BUNDLE/lib and the toolkit's libraries first in LD_LIBRARY_PATH;
# Python (the peer steps, the JSON summary) runs with the caller's LD_LIBRARY_PATH, so that
# torch never loads the bundle's older libstdc++; the runner starts peer_crosscoder_step through
# a small wrapper that sets the bundle's path for that process alone.
set -uo pipefail

self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
repo=$(cd "$(dirname "$self")/.." && pwd)

# ---- the steps' bodies (run as `gpu_check.sh __step NAME ARGS...` under timeout) -------------

# Runs a C++ program of the bundle with the bundle's and the toolkit's libraries.
cxx() { LD_LIBRARY_PATH="$GPU_CHECK_CXX_LD" "$@"; }

step_ldd() {
  local bundle=$1 missing=0 program library
  echo "LD_LIBRARY_PATH for the C++ programs: $GPU_CHECK_CXX_LD"
  for program in crosscoder crosscoder_tests bench_cuda peer_crosscoder_step; do
    if [[ ! -x $bundle/$program ]]; then
      echo "MISSING PROGRAM: $bundle/$program"
      missing=1
      continue
    fi
    echo "-- $program"
    local listing
    listing=$(cxx ldd "$bundle/$program" 2>&1)
    # The CUDA libraries, wherever found, and anything not found.
    grep -E 'libcudart|libcublas|libcurand|libcuda\.so|libstdc\+\+|not found' <<< "$listing" | sed 's/^[[:space:]]*/   /'
    local wanted=(libcudart.so libcublas.so libcublasLt.so)
    [[ $program == bench_cuda ]] && wanted+=(libcurand.so)
    for library in "${wanted[@]}"; do
      if ! grep -qE "^[[:space:]]*${library//./\\.}\.[0-9]+ => /" <<< "$listing"; then
        echo "NOT FOUND: $library for $program (looked in $GPU_CHECK_CXX_LD and the system's paths)"
        missing=1
      fi
    done
    if grep -q 'not found' <<< "$listing"; then
      echo "NOT FOUND: $(grep 'not found' <<< "$listing" | awk '{ print $1 }' | tr '\n' ' ')for $program"
      missing=1
    fi
  done
  if ((missing)); then
    echo "ldd check FAILED: the libraries above are missing; set CUDA_LIB_DIR to the CUDA 13 toolkit's lib64"
    return 1
  fi
  echo "ldd check passed: libcudart, libcublas, libcublasLt (and libcurand for bench_cuda) found"
}

step_backends() {
  local bundle=$1 listing
  listing=$(cxx "$bundle/crosscoder" backends 2>&1)
  local rc=$?
  echo "$listing"
  ((rc == 0)) || return "$rc"
  if grep -qE '^[[:space:]]*cuda[[:space:]]+usable' <<< "$listing"; then
    echo "CUDA backend usable"
  else
    echo "NO USABLE CUDA DEVICE: $(grep -E '^[[:space:]]*cuda' <<< "$listing" | sed 's/^[[:space:]]*//')"
    return 1
  fi
}

# The tests of FILTER, after checking that it selects CUDA-parameterised tests at all (without a
# GPU the CUDA instantiations do not exist, and a filter would run nothing and pass).
require_cuda_tests() {
  local binary=$1 filter=$2 names count
  names=$(cxx "$binary" --gtest_list_tests "--gtest_filter=$filter" 2>&1) || {
    echo "$names"
    return 1
  }
  count=$(grep -cE '^  .*/cuda' <<< "$names")
  echo "filter $filter: $(grep -c '^  ' <<< "$names") tests, $count of them on CUDA"
  if ((count == 0)); then
    echo "NO CUDA TEST MATCHED: the CUDA instantiations exist only where a CUDA device is usable"
    return 1
  fi
}

step_tests() {
  local bundle=$1 filter=$2
  require_cuda_tests "$bundle/crosscoder_tests" "$filter" || return 1
  cxx "$bundle/crosscoder_tests" "--gtest_filter=$filter"
}

find_sanitizer() {
  local candidate
  for candidate in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer \
      "$(dirname "$(command -v nvcc 2>/dev/null || echo /nonexistent/nvcc)")/compute-sanitizer"; do
    [[ -n $candidate && -x $candidate ]] && { echo "$candidate"; return 0; }
  done
  return 1
}

step_sanitizer() {
  local bundle=$1 tool=$2 filter=$3 sanitizer
  sanitizer=$(find_sanitizer) || {
    echo "compute-sanitizer NOT FOUND (PATH, /usr/local/cuda/bin, beside nvcc)"
    return 1
  }
  require_cuda_tests "$bundle/crosscoder_tests" "$filter" || return 1
  local extra=()
  [[ $tool == memcheck ]] && extra=(--leak-check full)
  echo "$sanitizer --tool $tool ${extra[*]} --error-exitcode 1"
  cxx "$sanitizer" --tool "$tool" "${extra[@]}" --error-exitcode 1 \
    "$bundle/crosscoder_tests" --gtest_brief=1 "--gtest_filter=$filter"
}

step_bench() {
  local bundle=$1 json=$2 filter=$3
  cxx "$bundle/bench_cuda" "--benchmark_filter=$filter" --benchmark_repetitions=1 \
    --benchmark_min_time=0.2 --benchmark_format=console --benchmark_out_format=json \
    "--benchmark_out=$json" || return 1
  # The counters the floors are computed from, and every benchmark that reported an error.
  python3 - "$json" <<'EOF'
import json, sys
runs = json.load(open(sys.argv[1]))["benchmarks"]
errors = [r["name"] for r in runs if r.get("error_occurred")]
by_name = {r["name"]: r for r in runs if not r.get("error_occurred")}
print(f"\n{len(runs)} benchmarks, {len(errors)} with an error")
for name in errors:
    print(f"  ERROR {name}: {next(r for r in runs if r['name'] == name).get('error_message')}")
copy = by_name.get("BM_CudaCopy/1024/real_time", {}).get("bytes/s")
for name, r in by_name.items():
    counters = {k: r[k] for k in ("bytes/s", "FLOP/s", "tokens/s") if k in r}
    text = ", ".join(f"{k} {v:.4g}" for k, v in counters.items())
    if copy and "bytes/s" in r and "Copy" not in name:
        text += f" ({r['bytes/s'] / copy:.0%} of the copy's)"
    print(f"  {name}: {r['real_time']:.4g} {r['time_unit']} {r.get('label', '')} {text}")
topk = by_name.get("BM_CudaSelect/4096/65536/64/0/real_time", {}).get("bytes/s")
if copy and topk:
    print(f"TopK 4096x65536 k=64 against copy bandwidth: {topk / copy:.1%} (target >= 50%)")
step = by_name.get("BM_CudaTrainingStep/2304/65536/100/4096/2/real_time", {}).get("tokens/s")
if step:
    print(f"training step D=4608 F=65536 k=100 B=4096 bf16: {step:,.0f} tokens/s "
          f"(target >= 450,000: {'met' if step >= 450_000 else 'NOT met'})")
sys.exit(1 if errors or not runs else 0)
EOF
}

step_peer() {
  local wrapper=$1
  shift
  # The caller's library path: the bundle's libstdc++ is not put ahead of the system's for torch.
  echo "python3 $(command -v python3); LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-(unset)}; the binary through $wrapper"
  PYTHONUNBUFFERED=1 python3 "$repo/benchmarks/peer/run_peer_benchmark.py" --device cuda --peers all \
    --binary "$wrapper" "$@"
}

if [[ ${1:-} == __step ]]; then
  name=$2
  shift 2
  "step_$name" "$@"
  exit $?
fi

# ---- arguments ---------------------------------------------------------------------------------

usage() {
  echo "usage: scripts/gpu_check.sh [--run 1|2] [--budget S] [--archive-dir DIR] [--force] BUNDLE OUT_DIR [first|second]" >&2
  exit 2
}
run=""
budget=${GPU_CHECK_BUDGET:-}
archive_dir=${GPU_CHECK_ARCHIVE_DIR:-}
force=${GPU_CHECK_FORCE:-0}
positional=()
while (($#)); do
  case $1 in
    --run) run=${2:-}; shift 2 || usage ;;
    --run=*) run=${1#--run=}; shift ;;
    --budget) budget=${2:-}; shift 2 || usage ;;
    --budget=*) budget=${1#--budget=}; shift ;;
    --archive-dir) archive_dir=${2:-}; shift 2 || usage ;;
    --archive-dir=*) archive_dir=${1#--archive-dir=}; shift ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '3,/^set -uo/p' "$self" | sed '$d'; exit 0 ;;
    -*) usage ;;
    *) positional+=("$1"); shift ;;
  esac
done
((${#positional[@]} >= 2 && ${#positional[@]} <= 3)) || usage
bundle=${positional[0]}
out=${positional[1]}
[[ ${#positional[@]} == 3 ]] && run=${positional[2]}
case $run in
  1|first) run=1 ;;
  2|second) run=2 ;;
  *) echo "gpu_check.sh: say which run: first or second (--run 1|2)" >&2; usage ;;
esac
if [[ -z $budget ]]; then
  budget=$((run == 1 ? 330 : 300))
fi
[[ $budget =~ ^[0-9]+$ ]] || usage
[[ -d $bundle ]] || { echo "gpu_check.sh: no bundle at $bundle (scripts/gpu_bundle.sh makes it)" >&2; exit 2; }
bundle=$(cd "$bundle" && pwd)
archive_dir=${archive_dir:-$out}
mkdir -p "$out/run$run" "$archive_dir" || exit 2
out=$(cd "$out" && pwd)
archive_dir=$(cd "$archive_dir" && pwd)
logs=$out/run$run
archive=$archive_dir/gpu-check-run$run.tar.gz
summary=$logs/summary.txt

# ---- environment -------------------------------------------------------------------------------

if [[ -z ${CUDA_LIB_DIR:-} ]]; then
  CUDA_LIB_DIR=/usr/local/cuda/lib64
  if [[ ! -d $CUDA_LIB_DIR ]] && command -v nvcc > /dev/null; then
    CUDA_LIB_DIR=$(cd "$(dirname "$(command -v nvcc)")/../lib64" 2>/dev/null && pwd) || CUDA_LIB_DIR=/usr/local/cuda/lib64
  fi
fi
export GPU_CHECK_CXX_LD="$bundle/lib:$CUDA_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CROSSCODER_MALFORMED_DIR="$repo/tests/data/malformed"
# peer_crosscoder_step through a wrapper: the bundle's libraries for it alone, not for python3.
wrapper=$logs/peer_crosscoder_step.sh
printf '#!/usr/bin/env bash\nLD_LIBRARY_PATH=%q exec %q "$@"\n' "$GPU_CHECK_CXX_LD" "$bundle/peer_crosscoder_step" > "$wrapper"
chmod +x "$wrapper"

# ---- the step runner ---------------------------------------------------------------------------

start=$(date +%s)
deadline=$((start + budget))
reserve=15   # kept back for the archive at the end
failed=0
skipped_required=0
cuda_ok=1
stop_reason=""

{
  echo "gpu_check.sh run $run on $(hostname) at $(date -u '+%Y-%m-%d %H:%M:%S UTC'), budget ${budget}s"
  echo "bundle $bundle; CUDA libraries from $CUDA_LIB_DIR; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  printf '%-18s %-10s %6s %8s %8s\n' step status rc wall_s limit_s
} > "$summary"

pack() {
  tar -czf "$archive.partial" -C "$out" "run$run" && mv -f "$archive.partial" "$archive"
  cp -f "$summary" "$archive_dir/summary-run$run.txt" 2>/dev/null || true
}

record() {  # name status rc wall limit
  printf '%-18s %-10s %6s %8s %8s\n' "$@" >> "$summary"
}

# step NAME LIMIT KIND -- COMMAND...   KIND: required, optional (failure not counted), cuda
# (required, and skipped when no CUDA device is usable) or cuda-optional (both).
step() {
  local name=$1 limit=$2 kind=$3
  shift 4
  local now left
  now=$(date +%s)
  left=$((deadline - reserve - now))
  if [[ -n $stop_reason ]] || { [[ $kind == cuda* ]] && ((!cuda_ok)); }; then
    local why=${stop_reason:-the backends step found no usable CUDA device or failed: backends.log}
    echo "== $name: SKIPPED ($why)"
    echo "SKIPPED: $why" > "$logs/$name.log"
    record "$name" skipped - 0 "$limit"
    [[ $kind == *optional ]] || failed=1
    pack
    return 1
  fi
  if ((left < 10)); then
    echo "== $name: SKIPPED (${left}s of the ${budget}s budget left)"
    echo "SKIPPED: ${left}s of the budget left" > "$logs/$name.log"
    record "$name" no-time - 0 "$limit"
    [[ $kind == *optional ]] || skipped_required=1
    pack
    return 1
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s): $*"
  local t0 t1 rc status
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$logs/$name.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  local wall
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  if ((rc == 0)); then
    status=ok
    echo "   ok in ${wall}s: $(tail -1 "$logs/$name.log")"
  else
    if ((rc == 124 || rc == 137)); then
      status=timeout
      echo "   TIMED OUT after ${wall}s (limit ${limit}s), last lines:"
    else
      status=FAILED
      echo "   FAILED (rc $rc) in ${wall}s, last lines:"
    fi
    tail -15 "$logs/$name.log" | sed 's/^/   | /'
    if [[ $kind == *optional ]]; then
      status="$status*"
    else
      failed=1
    fi
  fi
  record "$name" "$status" "$rc" "$wall" "$limit"
  pack
  [[ $status == ok ]]
}

# The tests (docs: the names are Backends/Suite.Test/cuda and Variants/CrosscoderNumerics.Test/cuda_variant).
ops='Backends/BackendOps.*/cuda*'
selections='Backends/Selections.*/cuda*'
numerics='Variants/CrosscoderNumerics.*/cuda_*'
memory='Backends/BackendMemory.*/cuda*'
parity='Variants/BackendTrainingParity.*:BackendTrainingParityTiles.*'
bench_filter=${BENCH_FILTER:-'^BM_Cuda(Copy|EncoderGemm|Select|Sparse|Adam)/|^BM_CudaTrainingStep/2304/65536/100/4096/2/'}

step nvidia_smi 20 optional -- nvidia-smi
step ldd 30 required -- "$self" __step ldd "$bundle" || stop_reason="libraries missing (see ldd.log)"
if ! step backends 60 required -- "$self" __step backends "$bundle"; then
  if ((force)); then
    echo "   --force: running the CUDA steps anyway"
  else
    cuda_ok=0
  fi
fi

if ((run == 1)); then
  step tests 150 cuda -- "$self" __step tests "$bundle" \
    "$ops:$selections:$numerics:$memory:$parity:CudaAvailability.*:BackendRegistry.*"
  step memcheck 200 cuda -- "$self" __step sanitizer "$bundle" memcheck "$ops:$selections:$numerics"
  step racecheck 100 cuda -- "$self" __step sanitizer "$bundle" racecheck "$selections"
  step synccheck 80 cuda -- "$self" __step sanitizer "$bundle" synccheck "$selections"
else
  step bench_cuda 200 cuda -- "$self" __step bench "$bundle" "$logs/bench_cuda.json" "$bench_filter"
  step peer_check 150 cuda -- "$self" __step peer "$wrapper" --check
  step peer_timing_ref 90 cuda -- "$self" __step peer "$wrapper" --reps 10 --warmup 3 \
    --shapes 512x16384x64x1024 --json "$logs/peer-cuda-ref.json"
  # The full shape only with 3 minutes left: loading and bringing up four implementations of
  # 2.4 GB each takes most of that.
  if ((deadline - reserve - $(date +%s) >= 180)) || [[ -n $stop_reason ]] || ((!cuda_ok)); then
    step peer_timing_full 400 cuda-optional -- "$self" __step peer "$wrapper" --reps 5 --warmup 3 \
      --shapes 2304x65536x64x4096 --json "$logs/peer-cuda-full.json"
  else
    echo "== peer_timing_full: SKIPPED ($((deadline - reserve - $(date +%s)))s left, under 180s)"
    echo "SKIPPED: under 180s of the budget left" > "$logs/peer_timing_full.log"
    record peer_timing_full no-time - 0 -
  fi
fi

total=$(($(date +%s) - start))
status=0
((skipped_required)) && status=3
((failed)) && status=1
{
  echo "total ${total}s of ${budget}s; exit status $status (0 passed, 1 failed, 3 a required step had no time)"
} >> "$summary"
pack
echo
cat "$summary"
echo "archive: $archive ($(du -h "$archive" | cut -f1))"
exit $status
