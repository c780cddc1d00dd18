// Internal: the AVX-512 kernels of conv3x3_avx512.cc. Only conv3x3.cc calls them, after
// checking the CPU (CpuHasAvx512Kernels).
//
// The *_avx512.cc files are built with -mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma. They
// must not instantiate any function with external linkage that a baseline object may also
// instantiate (an inline function of a shared header, a std:: algorithm such as std::min or
// std::fill, a member of a std:: class template): such copies are weak symbols, and the linker
// keeps one of them for every caller, possibly the AVX-512 one (SIGILL on other CPUs) when the
// calls are not inlined, e.g. at -O0. Their helpers live in unnamed namespaces; headers they
// include declare functions only (the shared ones are defined in the baseline .cc files).
#pragma once

#include "worker/backend/cpu/conv3x3.h"

namespace resdist::cpu::avx512 {

// Returns false, having done nothing, when g.w is none of the widths the kernels handle
// (Conv3x3Supported); the caller checks that and turns it into an error.
bool Forward(const Conv3x3Geometry& g, const float* src, const float* packed, float* dst);
// Fills one packed [O/16][C/16][3][3][16 in][16 out] partial sum per OpenMP thread of the team
// it runs; returns that team's size (the number of partials written).
int BackwardWeights(const Conv3x3Geometry& g, const float* src, const float* ddst,
                     float* scratch);

}  // namespace resdist::cpu::avx512
