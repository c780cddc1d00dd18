// Direct 3x3 convolution (stride 1, padding 1) for the nChw16c layout with AVX-512, used in
// place of oneDNN 2.6's kernels for the layers that dominate a ResNet step.
//
// Why: oneDNN's AVX-512 direct kernel keeps 16 output channels per vector and broadcasts one
// input value per FMA when a layer has only 16 (or 32) output channels, so it runs at about a
// third of this machine's FMA peak on ResNet-20's 16- and 32-channel stages. These kernels
// reuse each broadcast input value for the three horizontal taps (kw = 0, 1, 2) and, where the
// image is narrow, for two output-channel blocks, so a broadcast feeds 3 to 6 FMAs.
//
// Layouts (all f32):
//   activations  nChw16c: [N][C/16][H][W][16]      (oneDNN's aBcd16b)
//   packed weights      : [O/16][C/16][3][3][16 in][16 out]
// Backward-data is the forward kernel over the output gradient with weights packed by
// Conv3x3PackBackwardDataWeights (input/output swapped, kernel flipped).
#pragma once

#include <cstddef>
#include <cstdint>

namespace resdist::cpu {

struct Conv3x3Geometry {
  int64_t n = 0, c = 0, o = 0, h = 0, w = 0;  // batch, in/out channels, image height/width
};

// True when this CPU runs every instruction set the AVX-512 kernels (conv3x3, winograd,
// winograd_weights) are compiled for: AVX-512 F, VL, BW and DQ, and FMA. Checked once, then
// cached. Every *Supported() function of the CPU backend requires it.
bool CpuHasAvx512Kernels();

// True when CpuHasAvx512Kernels() and the kernels handle `g`: channels multiples of 16 and a
// width that is a multiple of 16, or 4, 8 or 12.
bool Conv3x3Supported(const Conv3x3Geometry& g);

// Floats in a packed weight buffer (O*C*9). Not inline: the AVX-512 objects include this
// header, and any inline function they instantiated could be merged with a baseline caller's
// copy (see conv3x3_kernels.h).
int64_t Conv3x3PackedWeightFloats(const Conv3x3Geometry& g);

// OIHW -> [O/16][C/16][3][3][16 in][16 out].
void Conv3x3PackForwardWeights(const Conv3x3Geometry& g, const float* oihw, float* packed);
// OIHW -> the forward packing of the transposed, flipped kernel: [C/16][O/16][3][3][16][16].
void Conv3x3PackBackwardDataWeights(const Conv3x3Geometry& g, const float* oihw,
                                    float* packed);

// dst = conv(src, W). src [N][C/16][H][W][16], dst [N][O/16][H][W][16]. Throws
// std::invalid_argument unless Conv3x3Supported(g) (as does Conv3x3BackwardData).
void Conv3x3Forward(const Conv3x3Geometry& g, const float* src, const float* packed,
                    float* dst);
// dsrc = conv_transpose(ddst, W), with `packed` from Conv3x3PackBackwardDataWeights.
void Conv3x3BackwardData(const Conv3x3Geometry& g, const float* ddst, const float* packed,
                         float* dsrc);

// Scratch the backward-weights kernel needs for `threads` OpenMP threads, in floats.
int64_t Conv3x3BackwardWeightsScratchFloats(const Conv3x3Geometry& g, int threads);
// dweight (plain OIHW, overwritten) = sum over the batch of src (x) ddst. Any width; throws
// std::invalid_argument without CpuHasAvx512Kernels(), channels multiples of 16 or h, w >= 1.
void Conv3x3BackwardWeights(const Conv3x3Geometry& g, const float* src, const float* ddst,
                            float* scratch, float* dweight_oihw);

}  // namespace resdist::cpu
