// Winograd F(2x2, 3x3) backward-weights for 3x3 stride-1 padding-1 convolutions on the
// nChw16c layout, a drop-in alternative to Conv3x3BackwardWeights (conv3x3.h).
//
// Why: the direct backward-weights kernel already runs at this machine's FMA peak, so only
// fewer multiplications can make it faster. Each 2x2 tile of the output gradient meets a 4x4
// input tile; their 3x3 correlation is computed from 16 products in the transformed domain
// instead of 36 (2.25x fewer), and the sum over tiles becomes 16 GEMMs
//   M_e[ic][oc] += sum over tiles of V_e[tile][ic] * Y_e[tile][oc]   (e = 0..15)
// whose reduction dimension (the tiles) is long enough to run near peak.
//
// Transforms (with the sign of the last row moved from A to B^T, which leaves every product
// unchanged):
//   V = B^T d B,   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 -1 0 1]          (d: 4x4 input tile)
//   Y = A g A^T,   A   = [1 0; 1 1; 1 -1; 0 1]                            (g: 2x2 gradient tile)
//   dW = G^T M G,  G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]               (M: 4x4, summed)
// The tile at (ty, tx) covers output rows 2ty, 2ty+1 and columns 2tx, 2tx+1, and input rows
// 2ty-1 .. 2ty+2, columns 2tx-1 .. 2tx+2; samples outside the image are zero, which gives the
// padding and the partial tiles of odd sizes.
#pragma once

#include <cstdint>

#include "worker/backend/cpu/conv3x3.h"

namespace resdist::cpu {

// True when CpuHasAvx512Kernels() (conv3x3.h), c and o are multiples of 16 and n, h, w >= 1
// (any h and w: odd sizes use partial tiles).
bool WinogradWeightsSupported(const Conv3x3Geometry& g);

// Scratch WinogradBackwardWeights needs when OpenMP runs up to `threads` threads, in floats.
// Size it with omp_get_max_threads(); the call allocates nothing.
int64_t WinogradWeightsScratchFloats(const Conv3x3Geometry& g, int threads);

// dweight (plain OIHW [O][C][3][3], overwritten) = the gradient of dst = conv3x3(src, W)
// (stride 1, pad 1) w.r.t. W: sum over batch and pixels of src (x) ddst.
// src [N][C/16][H][W][16], ddst [N][O/16][H][W][16]. The result is deterministic for a given
// OpenMP thread count.
void WinogradBackwardWeights(const Conv3x3Geometry& g, const float* src, const float* ddst,
                             float* scratch, float* dweight_oihw);

// Internal: shared by winograd_weights.cc (baseline ISA) and winograd_weights_avx512.cc (the
// kernels, built for AVX-512 F/VL/BW/DQ and FMA). Nothing else should use it. No function is
// defined inline here: the AVX-512 object would instantiate it too, and the linker could hand
// baseline callers that copy (see conv3x3_kernels.h).
namespace winograd_internal {

// One thread's part of the scratch, in floats; every part starts 64-byte aligned.
//   m  [16][C][O]                        its partial sum of the transformed products M_e
//   v  [C/16][tile_block][kTileStride]   the input transforms V of one block of tiles
//   y  [O/16][tile_block][kGradStride]   the raw 2x2 gradient tiles of the same tiles
// A tile's 16 elements of one input channel block are 16 consecutive vectors, so the
// transforms store through one pointer; the spare 17th line per tile keeps a GEMM's walk over
// the tiles of one element (a 1088-byte stride) from piling into a few L1 sets, as a 1024-byte
// stride would.
struct Layout {
  static constexpr int64_t kTileStride = 17 * 16;
  static constexpr int64_t kGradStride = 4 * 16;
  int64_t tile_block = 0;
  int64_t m = 0, v = 0, y = 0, per_thread = 0;
};

// The layout for `g`. Defined in winograd_weights.cc (baseline ISA); the kernels call it too.
Layout MakeLayout(const Conv3x3Geometry& g);

// Extra floats so that the scratch base can be aligned up to 64 bytes.
inline constexpr int64_t kScratchSlack = 16;

// Fills the `m` part of one Layout per thread of the OpenMP team it runs, starting at
// `scratch` (64-byte aligned); returns that team's size. Needs CpuHasAvx512Kernels().
int Accumulate(const Conv3x3Geometry& g, const float* src, const float* ddst, float* scratch);

}  // namespace winograd_internal

}  // namespace resdist::cpu
