// Internal: the AVX-512 kernels of winograd_avx512.cc (built with -mavx512f). Only
// winograd.cc calls them, after checking the CPU.
#pragma once

#include <cstdint>

#include "worker/backend/cpu/conv3x3.h"

namespace resdist::cpu::wino_avx512 {

// Tiles per work unit (one thread transforms, multiplies and writes back this many 2x2 tiles).
constexpr int64_t kTiles = 16;
// Scratch per thread, in floats: transformed input and product blocks for up to 36 points.
inline int64_t ScratchPerThread(const Conv3x3Geometry& g) {
  return 36 * (kTiles * (g.c + g.o) + 2 * 16);
}

// F(tile x tile, 3x3), tile = 2 or 4; `u` transformed for the same tile size.
void Forward(const Conv3x3Geometry& g, int tile, const float* src, const float* u, float* dst,
             float* scratch);

}  // namespace resdist::cpu::wino_avx512
