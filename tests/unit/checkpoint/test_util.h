// Helpers for the checkpoint tests: a temporary directory per test, byte-level file damage, and
// random tensors with awkward bit patterns. Tests only.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/common/temp_dir.h"
#include "common/rng.h"

namespace resdist::testing {

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Random floats, with some special values mixed in (signed zero, denormal, inf, NaN payload).
inline std::vector<float> RandomFloats(int64_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(rng.next());
    float f;
    if (i % 97 == 5) {
      std::memcpy(&f, &bits, 4);  // any bit pattern, NaNs included
    } else {
      f = static_cast<float>(static_cast<int32_t>(bits)) * 1e-9f;
    }
    v[static_cast<size_t>(i)] = f;
  }
  if (n > 3) {
    v[0] = -0.f;
    v[1] = 1e-42f;  // denormal
    v[2] = -std::numeric_limits<float>::infinity();
  }
  return v;
}

inline bool SameBits(const float* a, const float* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(float)) == 0;
}

}  // namespace resdist::testing
