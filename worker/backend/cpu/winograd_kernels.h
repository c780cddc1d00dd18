// Internal: the AVX-512 kernels of winograd_avx512.cc (built for AVX-512 F/VL/BW/DQ and FMA).
// Only winograd.cc calls them, after checking the CPU (CpuHasAvx512Kernels). Declarations only:
// a function defined inline here would be instantiated in both objects and the linker could
// hand baseline callers the AVX-512 copy (see conv3x3_kernels.h).
#pragma once

#include <cstdint>

#include "worker/backend/cpu/conv3x3.h"

namespace resdist::cpu::wino_avx512 {

// Tiles per work unit (one thread transforms, multiplies and writes back this many 2x2 tiles).
constexpr int64_t kTiles = 16;
// Scratch per thread, in floats: transformed input and product blocks for up to 36 points.
// Defined in winograd.cc (baseline ISA); the kernels call it too.
int64_t ScratchPerThread(const Conv3x3Geometry& g);

// F(tile x tile, 3x3), tile = 2 or 4; `u` transformed for the same tile size.
void Forward(const Conv3x3Geometry& g, int tile, const float* src, const float* u, float* dst,
             float* scratch);

}  // namespace resdist::cpu::wino_avx512
