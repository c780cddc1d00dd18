// Seeded synthetic image classification data with learnable, class-dependent structure, for the
// `dataset convert --from synthetic` converter, tests and benchmarks. Not a model of real images.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace resdist {

struct SyntheticSpec {
  int64_t num_samples = 0;
  int height = 28;
  int width = 28;
  int channels = 1;
  int num_classes = 10;
  uint64_t seed = 0;
};

// Each class has a prototype: an oriented sinusoidal grating with a class-specific frequency,
// orientation and per-channel gain, plus a bright class-specific blob. A sample is its class
// prototype shifted by up to 2 pixels, with its contrast jittered and uniform noise added, so a
// small CNN learns it well but a nearest-mean classifier on raw pixels does not get it all.
// Sample i depends only on (spec, i): any range can be generated independently, in any order.
class SyntheticGenerator {
 public:
  static StatusOr<SyntheticGenerator> create(const SyntheticSpec& spec);

  const SyntheticSpec& spec() const { return spec_; }
  int64_t image_bytes() const {
    return static_cast<int64_t>(spec_.height) * spec_.width * spec_.channels;
  }

  // The label of sample i, uniform over classes.
  int32_t label(int64_t i) const;

  // Writes samples [begin, begin + count): images uint8 (count, H, W, C), labels int32 (count).
  void fill(int64_t begin, int64_t count, uint8_t* images, int32_t* labels) const;

 private:
  explicit SyntheticGenerator(const SyntheticSpec& spec) : spec_(spec) {}

  SyntheticSpec spec_;
  // Per class: (H + 2*kShift) x (W + 2*kShift) x C prototype, centred at 128.
  std::vector<std::vector<int16_t>> prototypes_;
};

// Convenience: the whole data set in memory.
struct SyntheticData {
  std::vector<uint8_t> images;  // (N, H, W, C)
  std::vector<int32_t> labels;  // (N)
};
StatusOr<SyntheticData> make_synthetic(const SyntheticSpec& spec);

}  // namespace resdist
