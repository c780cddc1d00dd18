#!/usr/bin/env bash
# Installs exactly the Debian packages resdist needs (skipping apt when all are present), then
# configures and builds a Release tree in build/ with all cores. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${RESDIST_BUILD_DIR:-$ROOT/build}"

PACKAGES=(
  build-essential cmake pkg-config
  libdnnl-dev libhdf5-dev libopenmpi-dev openmpi-bin
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libgtest-dev libgmock-dev libbenchmark-dev
  libsqlite3-dev libyaml-cpp-dev nlohmann-json3-dev libabsl-dev libcli11-dev
  libstb-dev libpng-dev libjpeg-dev
  dataset-fashion-mnist
  python3 python3-numpy python3-torch python3-torchvision python3-h5py
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PACKAGES[@]} Debian packages present"
fi

cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release ${RESDIST_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "$(nproc)"
