#!/usr/bin/env bash
# A rank killed mid-training must end the whole job with an error naming it, within a bounded
# time, instead of leaving the other ranks waiting in a collective:
#   killed_rank.sh "MPIRUN [FLAGS]" NUMPROC_FLAG TEST_PROGRAM
set -uo pipefail
read -r -a mpirun <<< "$1"
numproc_flag=$2
program=$3
log=$(mktemp)
trap 'rm -f "$log"' EXIT
started=$SECONDS
CROSSCODER_DP_KILL_RANK=1 timeout 120 "${mpirun[@]}" "$numproc_flag" 2 "$program" \
  --gtest_filter=DataParallelFailure.ARankKilledMidTraining > "$log" 2>&1
status=$?
elapsed=$((SECONDS - started))
if ((status == 0)); then
  cat "$log"
  echo "killed_rank.sh: the job succeeded although rank 1 was killed" >&2
  exit 1
fi
if ((status == 124)); then
  cat "$log"
  echo "killed_rank.sh: the job hung for 120 s after rank 1 was killed" >&2
  exit 1
fi
if ! grep -qiE "rank 1|signal 9|killed" "$log"; then
  cat "$log"
  echo "killed_rank.sh: mpirun's message does not name the killed rank" >&2
  exit 1
fi
echo "killed_rank.sh: the job ended with status $status in ${elapsed} s, naming the rank:"
grep -iE "rank 1|signal 9|killed" "$log" | head -3
