#!/usr/bin/env bash
# resdist data parallel (MPI) vs PyTorch DDP (gloo), side by side (issue 4, Performance); not a
# test. ResNet-20 at 3x32x32, global batch 128, synthetic data, full training steps:
#   resdist 1 rank x 1 thread (batch 128)        -> the scaling baseline
#   resdist 2 ranks x 1 thread (batch 64 each)    -> scaling = 2-rank / 1-rank throughput
#   resdist 2 ranks x 1 thread, all-reduce skipped (hidden --skip-allreduce) -> overlap check
#   PyTorch DDP gloo 2 processes x 1 thread (batch 64 each, channels_last, huge-page malloc)
# alternating, ROUNDS times; medians of each. The machine is shared and noisy: only the ratios
# within one run mean much.
#
# Usage: bench/mpi_vs_ddp.sh     (from any directory; ~3-4 minutes with the defaults)
# Environment:
#   RESDIST_BUILD_DIR  build tree with worker/resdist-worker (default: build-mpi, then build)
#   ROUNDS=3 STEPS=20  rounds of alternation; timed steps per run (3 untimed warm-up steps)
#   BUCKET_MB=0.25     resdist gradient bucket cap (ResNet-20 has 1.08 MB of gradients: 25 MB
#                      would be one bucket and nothing to overlap); DDP keeps its default 25
#   PYTHON             interpreter with torch (default /usr/bin/python3)
# The last line is always:
#   resnet20_2x1 resdist=<images/s> ddp=<images/s> ratio=<r> scaling=<2-rank/1-rank>
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${RESDIST_BUILD_DIR:-}"
if [[ -z "$build_dir" ]]; then
  build_dir="$repo/build-mpi"
  [[ -x "$build_dir/worker/resdist-worker" ]] || build_dir="$repo/build"
fi
[[ "$build_dir" = /* ]] || build_dir="$repo/$build_dir"
worker="$build_dir/worker/resdist-worker"
[[ -x "$worker" ]] || { echo "no $worker; build the resdist-worker target first" >&2; exit 2; }
rounds="${ROUNDS:-3}"
steps="${STEPS:-20}"
bucket_mb="${BUCKET_MB:-0.25}"
python="${PYTHON:-/usr/bin/python3}"
warmup=3  # resdist's trainer times steps after its first 3 (Trainer::kTimingWarmupSteps)

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
# Idle OpenMP workers must sleep, not spin, when ranks share cores.
export OMP_WAIT_POLICY=passive

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
samples=$(( (steps + warmup + 1) * 128 ))
cat > "$tmp/job.yaml" <<YAML
name: bench-resnet20
model: {arch: resnet20, num_classes: 10, shortcut: A}
data: {synthetic: {train_samples: $samples, height: 32, width: 32, channels: 3, classes: 10}}
batch_size: 128
epochs: 1
max_steps_per_epoch: $(( steps + warmup ))
optimizer: {lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4, schedule: constant}
seed: 1
threads_per_worker: 1
comm: {bucket_mb: $bucket_mb}
eval_every_epochs: 0
progress: off
YAML

# Prints the steady-state images/s of one resdist run.
resdist() {  # ranks [extra flags]
  local ranks="$1"; shift
  local out
  if [[ "$ranks" == 1 ]]; then
    out="$("$worker" --config "$tmp/job.yaml" "$@" 2>&1)"
  else
    out="$(mpirun -np "$ranks" --bind-to none "$worker" --config "$tmp/job.yaml" "$@" 2>&1)"
  fi
  local ips
  ips="$(sed -n 's/^throughput: \([0-9.]*\) images\/s.*/\1/p' <<<"$out")"
  [[ -n "$ips" ]] || { echo "resdist run failed:" >&2; echo "$out" >&2; exit 1; }
  echo "$ips"
}

ddp() {
  local out
  out="$(GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "$python" "$repo/bench/ddp_train.py" --procs 2 \
         --threads 1 --batch 64 --steps "$steps" --warmup "$warmup" 2>&1)"
  local ips
  ips="$(sed -n 's/^images_per_s=\([0-9.]*\)$/\1/p' <<<"$out")"
  [[ -n "$ips" ]] || { echo "DDP run failed:" >&2; echo "$out" >&2; exit 1; }
  echo "$ips"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

one=() two=() skip=() torch=()
for ((r = 1; r <= rounds; ++r)); do
  one+=("$(resdist 1)")
  two+=("$(resdist 2)")
  skip+=("$(resdist 2 --skip-allreduce)")
  torch+=("$(ddp)")
  echo "round $r: resdist_1x1=${one[-1]} resdist_2x1=${two[-1]} resdist_2x1_no_allreduce=${skip[-1]} ddp_2x1=${torch[-1]}"
done
m1="$(median "${one[@]}")"; m2="$(median "${two[@]}")"; ms="$(median "${skip[@]}")"; md="$(median "${torch[@]}")"
echo "medians over $rounds rounds (images/s): resdist 1x1 $m1, resdist 2x1 $m2, resdist 2x1 with all-reduce skipped $ms, DDP gloo 2x1 $md"
awk -v a="$m2" -v b="$ms" 'BEGIN {printf "overlap: all-reduce on / skipped = %.3f (target >= 0.95)\n", a / b}'
awk -v a="$m2" -v d="$md" -v o="$m1" \
  'BEGIN {printf "resnet20_2x1 resdist=%.1f ddp=%.1f ratio=%.2f scaling=%.2f\n", a, d, a / d, a / o}'
