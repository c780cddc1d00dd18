// Internal: small helpers shared by the *_avx512.cc kernel files, and only by them. Everything
// here sits in an unnamed namespace, so each AVX-512 translation unit gets its own copy with
// internal linkage: no weak symbol the linker could merge with baseline-ISA code (see
// worker/CMakeLists.txt). For the same reason the kernels instantiate no std:: function: Min,
// Max and Zero stand in for std::min, std::max and std::fill.
#pragma once

#include <cstdint>
#include <utility>

namespace resdist::cpu {
namespace {

// A compile-time index, like std::integral_constant<int, I> but with internal linkage: at -O0
// std::integral_constant<int, I>::operator int() is emitted as a weak symbol.
template <int I>
struct Index {
  static constexpr int value = I;
  constexpr operator int() const { return I; }
};

// Calls f(Index<i>) for i = 0..N-1, unrolled at compile time so that arrays of vectors in the
// kernels live in registers.
template <int N, typename F>
[[gnu::always_inline]] inline void Unroll(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) [[gnu::always_inline]] {
    (f(Index<I>{}), ...);
  }(std::make_integer_sequence<int, N>{});
}

inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t Max(int64_t a, int64_t b) { return a < b ? b : a; }
inline void Zero(float* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = 0.f;
}

}  // namespace
}  // namespace resdist::cpu
