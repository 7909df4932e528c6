#!/usr/bin/env bash
# Data parallel against threads on one machine, as ratios from one run: the reference shape
# (D = 2×512, F = 16,384, k = 64, B = 1,024) as 1 process × N threads and as N MPI processes ×
# 1 thread, alternately, REPEATS times each:
#   benchmarks/distributed/compare.sh BUILD_DIR [N=2] [REPEATS=3] [extra bench flags...]
set -euo pipefail
build=${1:?usage: compare.sh BUILD_DIR [N] [REPEATS] [flags...]}
n=${2:-2}
repeats=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
bench=$build/benchmarks/bench_data_parallel
[[ -x $bench ]] || { echo "compare.sh: $bench not built (needs MPI)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1  # Open MPI picks its shared-memory copy mechanism
threads=() ranks=()
for ((i = 0; i < repeats; ++i)); do
  line=$(OMP_NUM_THREADS=$n "$bench" "$@")
  echo "$line"
  threads+=("$(sed -E 's/.*step ([0-9.]+) ms.*/\1/' <<< "$line")")
  line=$(OMP_NUM_THREADS=1 mpirun -np "$n" --bind-to core "$bench" "$@")
  echo "$line"
  ranks+=("$(sed -E 's/.*step ([0-9.]+) ms.*/\1/' <<< "$line")")
done
# The model's input measured alone: the bus bandwidth of the gradients' all-reduce.
OMP_NUM_THREADS=1 mpirun -np "$n" --bind-to core "$bench" --all-reduce-only yes "$@"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
t=$(median "${threads[@]}")
r=$(median "${ranks[@]}")
awk -v t="$t" -v r="$r" -v n="$n" 'BEGIN {
  printf "median step: 1 process x %d threads %.1f ms, %d processes x 1 thread %.1f ms: ratio %.3f (processes / threads)\n", n, t, n, r, r / t }'
