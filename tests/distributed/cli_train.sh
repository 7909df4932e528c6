#!/usr/bin/env bash
# `mpirun -np N crosscoder train` end to end: the data-parallel, latent-sharded and grid models
# equal the one-process model on the same data and flags; one progress report; resumed runs at
# another rank count and another number of shards;
# bad input (a batch smaller than the ranks, ranks started with different flags) ends the job
# with an error naming the cause, never a hang.
#   cli_train.sh "MPIRUN" NUMPROC_FLAG CROSSCODER_CLI COMPARE_MODELS WRITE_SYNTHETIC_NPY WORKDIR
set -euo pipefail
read -r -a mpirun <<< "$1"
np=$2
cli=$3
compare=$4
write_npy=$5
work=$6
rm -rf "$work"
mkdir -p "$work"
"$write_npy" "$work" 3000 > /dev/null
data=(--data "$work/base.npy" --data "$work/finetuned.npy" --latents 64 --k 4 --warmup 5
      --checkpoint-every 10 --dead-after 400)
flags=("${data[@]}" --batch 200)
fail() { echo "cli_train.sh: $*" >&2; exit 1; }
# expect_refusal LOG PATTERN WHAT COMMAND...: COMMAND must end with an error (not a timeout)
# whose output names PATTERN.
expect_refusal() {
  local log=$1 pattern=$2 what=$3 status
  shift 3
  set +e
  timeout 120 "$@" > "$log" 2>&1
  status=$?
  set -e
  ((status != 0 && status != 124)) || { cat "$log"; fail "$what: status $status"; }
  grep -q "$pattern" "$log" || { cat "$log"; fail "$what: no reason given"; }
}
# expect_shards_match NAME FLAGS...: 2 latent shards train the one-process model.
expect_shards_match() {
  local name=$1
  shift
  "$cli" train "${flags[@]}" --steps 20 "$@" --out "$work/${name}_alone.safetensors" \
    > /dev/null 2>&1 || fail "the one-process $name run failed"
  timeout 300 "${mpirun[@]}" "$np" 2 "$cli" train "${flags[@]}" --steps 20 "$@" \
    --shard-latents 2 --out "$work/${name}_shards.safetensors" > "$work/$name.log" 2>&1 ||
    { cat "$work/$name.log"; fail "the sharded $name run failed"; }
  "$compare" "$work/${name}_alone.safetensors" "$work/${name}_shards.safetensors" 2e-4
}

"$cli" train "${flags[@]}" --steps 30 --out "$work/alone.safetensors" > "$work/alone.log" 2>&1 ||
  { cat "$work/alone.log"; fail "the one-process run failed"; }
timeout 300 "${mpirun[@]}" "$np" 2 "$cli" train "${flags[@]}" --steps 30 \
  --out "$work/ranks.safetensors" > "$work/ranks.log" 2>&1 ||
  { cat "$work/ranks.log"; fail "the 2-rank run failed"; }
grep -q "data parallel over MPI" "$work/ranks.log" || { cat "$work/ranks.log"; fail "no MPI banner"; }
[[ $(grep -c "final step 30" "$work/ranks.log") == 1 ]] ||
  { cat "$work/ranks.log"; fail "expected one final report (rank 0's)"; }
"$compare" "$work/alone.safetensors" "$work/ranks.safetensors" 2e-4

# Latent shards (--shard-latents): 2 ranks sharing every row, and a grid of 2 data replicas x 2
# shards; both write the whole model, equal to the one-process model.
timeout 300 "${mpirun[@]}" "$np" 2 "$cli" train "${flags[@]}" --steps 30 --shard-latents 2 \
  --out "$work/shards.safetensors" > "$work/shards.log" 2>&1 ||
  { cat "$work/shards.log"; fail "the 2-shard run failed"; }
grep -q "1 data replica x 2 latent shards over MPI" "$work/shards.log" ||
  { cat "$work/shards.log"; fail "no shard banner"; }
"$compare" "$work/alone.safetensors" "$work/shards.safetensors" 2e-4
timeout 300 "${mpirun[@]}" "$np" 4 "$cli" train "${flags[@]}" --steps 30 --shard-latents 2 \
  --out "$work/grid.safetensors" --checkpoint "$work/grid.train.safetensors" \
  > "$work/grid.log" 2>&1 || { cat "$work/grid.log"; fail "the 2 x 2 grid run failed"; }
grep -q "2 data replicas x 2 latent shards" "$work/grid.log" || { cat "$work/grid.log"; fail "no grid banner"; }
"$compare" "$work/alone.safetensors" "$work/grid.safetensors" 2e-4
# Dedicated partitions (8 latents exclusive to each model) and a Matryoshka dictionary (groups
# of 16 and 48 latents), sharded over 2 ranks.
expect_shards_match dedicated --exclusive 8
expect_shards_match nested --matryoshka 16,48

# A 30-step run at 2 ranks, resumed at 3 ranks to step 40.
timeout 300 "${mpirun[@]}" "$np" 2 "$cli" train "${flags[@]}" --steps 30 \
  --out "$work/split.safetensors" --checkpoint "$work/split.train.safetensors" > /dev/null 2>&1
timeout 300 "${mpirun[@]}" "$np" 3 "$cli" train "${flags[@]}" --steps 40 --resume \
  --out "$work/split.safetensors" --checkpoint "$work/split.train.safetensors" \
  > "$work/resume.log" 2>&1 || { cat "$work/resume.log"; fail "the 3-rank resume failed"; }
grep -q "resumed from .* at step 30" "$work/resume.log" || { cat "$work/resume.log"; fail "no resume"; }
# Against the one-process run resumed the same way (its checkpoint: alone.safetensors's).
"$cli" train "${flags[@]}" --steps 40 --resume --out "$work/alone.safetensors" > /dev/null 2>&1
"$compare" "$work/alone.safetensors" "$work/split.safetensors" 2e-4
# The grid's checkpoint (the whole model) resumed by 3 latent shards to step 40.
timeout 300 "${mpirun[@]}" "$np" 3 "$cli" train "${flags[@]}" --steps 40 --resume --shard-latents 3 \
  --out "$work/grid.safetensors" --checkpoint "$work/grid.train.safetensors" \
  > "$work/grid_resume.log" 2>&1 || { cat "$work/grid_resume.log"; fail "the 3-shard resume failed"; }
grep -q "resumed from .* at step 30" "$work/grid_resume.log" ||
  { cat "$work/grid_resume.log"; fail "no resume of the grid's checkpoint"; }
"$compare" "$work/alone.safetensors" "$work/grid.safetensors" 2e-4

# Bad input: errors that name the cause, within the timeout.
expect_refusal "$work/bad.log" "cannot be split over 3 ranks" "a batch of 2 rows on 3 ranks" \
  "${mpirun[@]}" "$np" 3 "$cli" train "${data[@]}" --batch 2 --steps 5 \
  --out "$work/bad.safetensors"
expect_refusal "$work/bad_shards.log" "shard-latents 3: 3 latent shards do not divide 2 ranks" \
  "3 shards on 2 ranks" \
  "${mpirun[@]}" "$np" 2 "$cli" train "${flags[@]}" --steps 5 --shard-latents 3 \
  --out "$work/bad.safetensors"
expect_refusal "$work/mixed.log" "rank 1's crosscoder or train configuration differs" \
  "ranks with other flags" \
  "${mpirun[@]}" "$np" 1 "$cli" train "${flags[@]}" --steps 5 --lr 1e-3 \
  --out "$work/mixed.safetensors" : "$np" 1 "$cli" train "${flags[@]}" --steps 5 --lr 2e-3 \
  --out "$work/mixed.safetensors"
echo "cli_train.sh: 2-rank, 2-shard and 2 x 2 grid models equal the one-process model; resumed at 3 ranks and 3 shards; bad input named"
