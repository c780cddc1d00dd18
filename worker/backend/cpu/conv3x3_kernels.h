// Internal: the AVX-512 kernels of conv3x3_avx512.cc (built with -mavx512f). Only conv3x3.cc
// calls them, after checking the CPU.
#pragma once

#include "worker/backend/cpu/conv3x3.h"

namespace resdist::cpu::avx512 {

void Forward(const Conv3x3Geometry& g, const float* src, const float* packed, float* dst);
// Fills one packed [O/16][C/16][3][3][16 in][16 out] partial sum per OpenMP thread of the team
// it runs; returns that team's size (the number of partials written).
int BackwardWeights(const Conv3x3Geometry& g, const float* src, const float* ddst,
                     float* scratch);

}  // namespace resdist::cpu::avx512
