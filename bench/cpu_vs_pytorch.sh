#!/usr/bin/env bash
# resdist vs PyTorch, full CPU training steps side by side (issue 2, Performance); not a test.
# For each configuration it runs resdist_train_bench and bench/pytorch_train.py (NCHW and
# channels_last) alternating, ROUNDS times, and reports median images/s and the ratio
# resdist / best PyTorch layout. The machine is shared and noisy: alternating in one run and
# taking medians is what makes the ratio meaningful, not the absolute numbers.
#
# Usage: bench/cpu_vs_pytorch.sh            (from any directory; ~10 minutes with the defaults,
#                                           most of it ResNet-18 at 64x64)
# Environment:
#   RESDIST_BUILD_DIR  build tree holding bench/resdist_train_bench (default: build; a relative
#                      path is taken relative to the repository root)
#   ROUNDS=3 STEPS=20 WARMUP=3   rounds of alternation; timed and untimed steps per run
#   PYTORCH_ONLY=1     skip resdist (e.g. before its binary is built)
#   PYTORCH_HUGETLB=1  run PyTorch with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (default 1; 0 to
#                      compare). First-touch page faults are very slow on this platform and
#                      huge-page malloc avoids them: measured alternating (ResNet-20, b128, 2
#                      threads, 3 rounds) it doubled NCHW's median (253 -> 538 images/s) and
#                      left channels_last, the better layout, within noise (637 vs 627; the
#                      platform notes report ~+10%). It never clearly hurt, so it is PyTorch's
#                      best setting and the honest one to compare against.
#   PYTHON             interpreter with torch (default /usr/bin/python3, Debian's PyTorch)
# The last line is always:
#   resnet20_b128_t2 resdist=<images/s> pytorch=<images/s> ratio=<resdist/pytorch>
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${RESDIST_BUILD_DIR:-build}"
[[ "$build_dir" = /* ]] || build_dir="$repo/$build_dir"
resdist_bin="$build_dir/bench/resdist_train_bench"
pytorch_py="$repo/bench/pytorch_train.py"
python="${PYTHON:-/usr/bin/python3}"
rounds="${ROUNDS:-3}"
steps="${STEPS:-20}"
warmup="${WARMUP:-3}"
pytorch_only="${PYTORCH_ONLY:-0}"
hugetlb="${PYTORCH_HUGETLB:-1}"

for v in rounds steps; do
  if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then
    echo "cpu_vs_pytorch.sh: ${v^^}=${!v} is not allowed; expected an integer >= 1" >&2
    exit 2
  fi
done
if ! [[ "$warmup" =~ ^[0-9]+$ ]]; then
  echo "cpu_vs_pytorch.sh: WARMUP=$warmup is not allowed; expected an integer >= 0" >&2
  exit 2
fi
if [[ "$pytorch_only" != 1 && ! -x "$resdist_bin" ]]; then
  echo "cpu_vs_pytorch.sh: $resdist_bin not found; build it with" \
       "'cmake --build $build_dir --target resdist_train_bench', set RESDIST_BUILD_DIR," \
       "or run PyTorch alone with PYTORCH_ONLY=1" >&2
  exit 2
fi
if ! "$python" -c "import torch, torchvision" 2>/dev/null; then
  echo "cpu_vs_pytorch.sh: $python cannot import torch and torchvision;" \
       "install python3-torch python3-torchvision or set PYTHON" >&2
  exit 2
fi
pytorch_env=()
if [[ "$hugetlb" == 1 ]]; then pytorch_env=(env GLIBC_TUNABLES=glibc.malloc.hugetlb=1); fi

# name arch batch threads channels height width classes small_input_stem
configs=(
  "resnet20_b128_t1 resnet20 128 1 3 32 32 10 0"
  "resnet20_b128_t2 resnet20 128 2 3 32 32 10 0"
  "resnet18s_64_b32_t2 resnet18 32 2 3 64 64 10 1"
)

# Runs one benchmark and prints its images/s; the whole output goes to stderr on failure.
images_per_s() {
  local out
  if ! out="$("$@" 2>&1)"; then
    echo "cpu_vs_pytorch.sh: failed: $*" >&2
    echo "$out" >&2
    return 1
  fi
  local v
  v="$(grep -o 'images_per_s=[0-9.eE+-]*' <<<"$out" | tail -n 1 | cut -d= -f2)"
  if [[ -z "$v" ]]; then
    echo "cpu_vs_pytorch.sh: no images_per_s line from: $*" >&2
    echo "$out" >&2
    return 1
  fi
  echo "$v"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
  if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

declare -A results  # "<config>/<impl>" -> space-separated images/s of every round
echo "# $(date -u +%FT%TZ) $(nproc) cores; rounds=$rounds steps=$steps warmup=$warmup;" \
     "PyTorch $("$python" -c 'import torch; print(torch.__version__)') with" \
     "$([[ "$hugetlb" == 1 ]] && echo 'GLIBC_TUNABLES=glibc.malloc.hugetlb=1' || echo 'default malloc')"
for cfg in "${configs[@]}"; do
  read -r name arch batch threads c h w k stem <<<"$cfg"
  resdist_cmd=("$resdist_bin" --arch "$arch" --batch "$batch" --threads "$threads"
               --channels "$c" --height "$h" --width "$w" --classes "$k"
               --steps "$steps" --warmup "$warmup")
  if [[ "$stem" == 1 ]]; then resdist_cmd+=(--small-input-stem); fi
  pytorch_cmd=("${pytorch_env[@]}" "$python" "$pytorch_py" --model "$arch" --batch "$batch"
               --threads "$threads" --channels "$c" --height "$h" --width "$w"
               --classes "$k" --steps "$steps" --warmup "$warmup")
  impls=(nchw channels_last)
  if [[ "$pytorch_only" != 1 ]]; then impls=(resdist "${impls[@]}"); fi
  for ((r = 0; r < rounds; ++r)); do
    # Rotate the order each round so that no implementation always runs first or last.
    for ((i = 0; i < ${#impls[@]}; ++i)); do
      impl="${impls[$(((i + r) % ${#impls[@]}))]}"
      if [[ "$impl" == resdist ]]; then
        v="$(images_per_s "${resdist_cmd[@]}")"
      else
        v="$(images_per_s "${pytorch_cmd[@]}" --layout "$impl")"
      fi
      results["$name/$impl"]+="$v "
      echo "# round $((r + 1)) $name $impl images_per_s=$v"
    done
  done
done

printf '%-22s %12s %14s %16s %8s\n' config resdist pytorch_nchw pytorch_chlast ratio
final=""
for cfg in "${configs[@]}"; do
  read -r name _ <<<"$cfg"
  # shellcheck disable=SC2086  # word splitting of the per-round list is intended
  nchw="$(median ${results["$name/nchw"]})"
  # shellcheck disable=SC2086
  chlast="$(median ${results["$name/channels_last"]})"
  best="$(awk -v a="$nchw" -v b="$chlast" 'BEGIN { print (a > b ? a : b) }')"
  if [[ "$pytorch_only" == 1 ]]; then
    rd="n/a" ratio="n/a"
  else
    # shellcheck disable=SC2086
    rd="$(median ${results["$name/resdist"]})"
    ratio="$(awk -v a="$rd" -v b="$best" 'BEGIN { printf "%.2f", a / b }')"
  fi
  printf '%-22s %12s %14s %16s %8s\n' "$name" "$rd" "$nchw" "$chlast" "$ratio"
  if [[ "$name" == resnet20_b128_t2 ]]; then final="$name resdist=$rd pytorch=$best ratio=$ratio"; fi
done
echo "$final"
