#!/usr/bin/env bash
# The main job, end to end: set up (packages + build), convert Fashion-MNIST to resdist's HDF5
# format, train ResNet-20 on it in one process, and print the final test accuracy.
# Environment: DEMO_EPOCHS (default 2), DEMO_THREADS (default: all cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${RESDIST_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"

DATA="$ROOT/data"
FMNIST=/usr/share/datasets/fashion-mnist
CLASSES="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
mkdir -p "$DATA"
for split in train t10k; do
  out="$DATA/fmnist-$([[ $split == train ]] && echo train || echo test).h5"
  if [[ ! -f "$out" ]] || ! "$BUILD_DIR/client/resdist" dataset inspect "$out" > /dev/null 2>&1; then
    "$BUILD_DIR/client/resdist" dataset convert --from idx \
      --images "$FMNIST/$split-images-idx3-ubyte.gz" --labels "$FMNIST/$split-labels-idx1-ubyte.gz" \
      --class-names "$CLASSES" --out "$out"
  fi
done

echo "demo: training ResNet-20 on Fashion-MNIST (single process)"
"$BUILD_DIR/worker/resdist-worker" \
  --arch resnet20 --train "$DATA/fmnist-train.h5" --eval "$DATA/fmnist-test.h5" \
  --epochs "${DEMO_EPOCHS:-2}" --batch-size 128 --lr 0.1 --momentum 0.9 --nesterov \
  --weight-decay 5e-4 --no-decay-bn-bias --schedule cosine --warmup-epochs 0.2 \
  --crop-padding 2 --threads "${DEMO_THREADS:-$(nproc)}" --seed 1
