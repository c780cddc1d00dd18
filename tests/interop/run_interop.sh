#!/bin/sh
# ctest driver for the PyTorch interop check: the C++ helper writes a checkpoint, logits and a
# small dataset with resdist's own evaluation; load_checkpoint.py must reproduce all of it.
# Usage: run_interop.sh DUMP_BINARY WORK_DIR [ARCH [--verify-checksum]]
# Exits 77 (ctest: Skipped) when /usr/bin/python3 lacks torch or h5py.
set -eu
dump=$1
work=$2
arch=${3:-resnet20}
verify=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
if ! /usr/bin/python3 -c "import torch, h5py" 2>/dev/null; then
  echo "SKIP: /usr/bin/python3 cannot import torch and h5py (apt-get install python3-torch python3-h5py)"
  exit 77
fi
rm -rf "$work"
mkdir -p "$work"
"$dump" --out "$work" --arch "$arch"
accuracy=$(awk '{print $2}' "$work/eval.txt")
/usr/bin/python3 "$here/load_checkpoint.py" "$work/ckpt-e0001-s000000010.h5" \
  --logits "$work/logits.h5" --eval "$work/data.h5" --expect-accuracy "$accuracy" $verify
