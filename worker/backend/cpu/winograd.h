// Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution, stride 1, padding 1, on the nChw16c layout with AVX-512:
// the forward pass and (with transposed, flipped weights) the backward-data pass.
//
// Why: the direct kernels of conv3x3.h already run at this machine's FMA peak, so the only way
// to make a ResNet step faster is fewer multiplications. F(2x2, 3x3) computes each 2x2 output
// tile with 16 products per (input, output) channel pair instead of 36; F(4x4, 3x3) each 4x4
// tile with 36 instead of 144, at the price of larger rounding errors (still ~1e-6 relative
// to the output's scale in f32, see the tests). Each thread transforms
// a block of 16 tiles into L1-sized scratch, multiplies it by the transformed weights for all
// 16 transform points, and transforms the result straight into the output: nothing larger
// than the block is ever materialized.
//
// Layouts (f32): activations [N][C/16][H][W][16] (oneDNN's aBcd16b); transformed weights
// [(tile + 2)^2 points][O/16][C/16][16 in][16 out].
#pragma once

#include <cstdint>

#include "worker/backend/cpu/conv3x3.h"

namespace resdist::cpu {

// True when CpuHasAvx512Kernels() (conv3x3.h) and the channels are multiples of 16 (any
// H, W >= 1).
bool WinogradSupported(const Conv3x3Geometry& g);

// The tile size (2 or 4) used for `g`: 4 where the image is large enough for the cheaper
// transform to pay off. Deterministic, so runs repeat bit for bit.
int WinogradTile(const Conv3x3Geometry& g);

// Floats in a transformed weight buffer (enough for either tile size).
inline int64_t WinogradWeightFloats(const Conv3x3Geometry& g) { return 36 * g.o * g.c; }
// Per-thread scratch, in floats, for `threads` OpenMP threads.
int64_t WinogradScratchFloats(const Conv3x3Geometry& g, int threads);

// U = G w G^T for every (out, in) pair of the OIHW weights.
void WinogradTransformForwardWeights(const Conv3x3Geometry& g, int tile, const float* oihw,
                                     float* u);
// The same for the transposed, flipped kernel (in and out swapped) that backward-data uses.
void WinogradTransformBackwardDataWeights(const Conv3x3Geometry& g, int tile, const float* oihw,
                                          float* u);

// dst [N][O/16][H][W][16] = conv3x3(src [N][C/16][H][W][16]).
void WinogradForward(const Conv3x3Geometry& g, int tile, const float* src, const float* u,
                     float* dst, float* scratch);
// dsrc = conv_transpose(ddst), `u` from WinogradTransformBackwardDataWeights.
void WinogradBackwardData(const Conv3x3Geometry& g, int tile, const float* ddst, const float* u,
                          float* dsrc, float* scratch);

}  // namespace resdist::cpu
