// Synthetic data generator: class prototypes built once, samples drawn from keyed RNG streams.
#include "common/synthetic.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "common/rng.h"

namespace resdist {
namespace {

constexpr int kShift = 2;                            // maximum translation of a sample, in pixels
constexpr uint64_t kClassStream = 0x636c617373ULL;   // "class"
constexpr uint64_t kSampleStream = 0x73616d706cULL;  // "sampl"
constexpr uint64_t kLabelStream = 0x6c6162656cULL;   // "label"

}  // namespace

StatusOr<SyntheticGenerator> SyntheticGenerator::create(const SyntheticSpec& spec) {
  if (spec.num_samples < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("synthetic: num_samples is %d, expected >= 0", spec.num_samples));
  }
  if (spec.height < 1 || spec.width < 1 || spec.height > 4096 || spec.width > 4096) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "synthetic: shape %dx%d, expected height and width in [1, 4096]", spec.height, spec.width));
  }
  if (spec.channels < 1 || spec.channels > 4) {
    return absl::InvalidArgumentError(
        absl::StrFormat("synthetic: channels is %d, expected 1..4", spec.channels));
  }
  if (spec.num_classes < 1 || spec.num_classes > 100000) {
    return absl::InvalidArgumentError(
        absl::StrFormat("synthetic: num_classes is %d, expected 1..100000", spec.num_classes));
  }
  SyntheticGenerator gen(spec);
  const int ph = spec.height + 2 * kShift;
  const int pw = spec.width + 2 * kShift;
  const int c = spec.channels;
  const double kPi = 3.14159265358979323846;
  gen.prototypes_.resize(static_cast<size_t>(spec.num_classes));
  for (int k = 0; k < spec.num_classes; ++k) {
    Rng rng(hash_keys({spec.seed, kClassStream, static_cast<uint64_t>(k)}));
    // Orientation spread evenly over classes (plus jitter), 1.5 .. 4.5 periods per image.
    const double angle = kPi * (k + 0.3 * rng.uniform()) / spec.num_classes;
    const double periods = 1.5 + 3.0 * rng.uniform();
    const double fx = std::cos(angle) * periods / spec.width;
    const double fy = std::sin(angle) * periods / spec.height;
    const double phase = 2 * kPi * rng.uniform();
    std::vector<double> gain(c);
    for (int ch = 0; ch < c; ++ch) gain[ch] = 0.4 + 0.6 * rng.uniform();
    const double bx = kShift + spec.width * (0.2 + 0.6 * rng.uniform());
    const double by = kShift + spec.height * (0.2 + 0.6 * rng.uniform());
    const double br = std::max(1.5, 0.12 * std::min(spec.width, spec.height));
    std::vector<int16_t>& proto = gen.prototypes_[k];
    proto.resize(static_cast<size_t>(ph) * pw * c);
    for (int y = 0; y < ph; ++y) {
      for (int x = 0; x < pw; ++x) {
        const double wave = std::sin(2 * kPi * (fx * x + fy * y) + phase);
        const double d2 = ((x - bx) * (x - bx) + (y - by) * (y - by)) / (br * br);
        const double blob = std::exp(-d2);
        for (int ch = 0; ch < c; ++ch) {
          const double v = 55.0 * gain[ch] * wave + 60.0 * blob * (ch % 2 == 0 ? 1.0 : -0.5);
          proto[(static_cast<size_t>(y) * pw + x) * c + ch] = static_cast<int16_t>(std::lround(v));
        }
      }
    }
  }
  return gen;
}

int32_t SyntheticGenerator::label(int64_t i) const {
  return static_cast<int32_t>(hash_keys({spec_.seed, kLabelStream, static_cast<uint64_t>(i)}) %
                              static_cast<uint64_t>(spec_.num_classes));
}

void SyntheticGenerator::fill(int64_t begin, int64_t count, uint8_t* images,
                              int32_t* labels) const {
  const int h = spec_.height, w = spec_.width, c = spec_.channels;
  const int pw = w + 2 * kShift;
  const int64_t bytes = image_bytes();
  for (int64_t s = 0; s < count; ++s) {
    const int64_t i = begin + s;
    const int32_t k = label(i);
    labels[s] = k;
    Rng rng(hash_keys({spec_.seed, kSampleStream, static_cast<uint64_t>(i)}));
    const int dx = static_cast<int>(rng.below(2 * kShift + 1));
    const int dy = static_cast<int>(rng.below(2 * kShift + 1));
    const int contrast = 180 + static_cast<int>(rng.below(100));  // x/256: 0.70 .. 1.09
    const int base = 108 + static_cast<int>(rng.below(41));       // brightness 108 .. 148
    const int16_t* proto = prototypes_[k].data();
    uint8_t* out = images + s * bytes;
    uint64_t noise = rng.next();
    int noise_left = 8;
    for (int y = 0; y < h; ++y) {
      const int16_t* row = proto + (static_cast<size_t>(y + dy) * pw + dx) * c;
      for (int j = 0; j < w * c; ++j) {
        if (noise_left == 0) {
          noise = rng.next();
          noise_left = 8;
        }
        const int n = static_cast<int>(noise & 0xff) / 8 - 16;  // -16 .. 15
        noise >>= 8;
        --noise_left;
        const int v = base + ((row[j] * contrast) >> 8) + n;
        out[static_cast<size_t>(y) * w * c + j] = static_cast<uint8_t>(std::clamp(v, 0, 255));
      }
    }
  }
}

StatusOr<SyntheticData> make_synthetic(const SyntheticSpec& spec) {
  ASSIGN_OR_RETURN(SyntheticGenerator gen, SyntheticGenerator::create(spec));
  SyntheticData data;
  data.images.resize(static_cast<size_t>(spec.num_samples * gen.image_bytes()));
  data.labels.resize(static_cast<size_t>(spec.num_samples));
  gen.fill(0, spec.num_samples, data.images.data(), data.labels.data());
  return data;
}

}  // namespace resdist
