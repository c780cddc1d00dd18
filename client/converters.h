// Sources for `resdist dataset convert`: read MNIST-style IDX, CIFAR-10/100 binary batches, a
// folder of PNG/JPEG images per class, or synthetic data, and stream them into a DatasetWriter.
// No CLI parsing here (dataset_command.cc) and no schema rules (common/dataset.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/dataset.h"
#include "common/status.h"

namespace resdist::client {

// A sequence of labelled uint8 images of one shape, read front to back.
class ImageSource {
 public:
  virtual ~ImageSource() = default;
  virtual int64_t num_samples() const = 0;
  virtual int height() const = 0;
  virtual int width() const = 0;
  virtual int channels() const = 0;
  virtual std::vector<std::string> class_names() const = 0;
  virtual std::string description() const = 0;  // stored as the `source` attribute
  // Reads the next `count` samples: images (count, H, W, C), labels (count).
  virtual Status read(int64_t count, uint8_t* images, int32_t* labels) = 0;
};

// MNIST / Fashion-MNIST IDX files, gzipped or not (magic 0x803 images, 0x801 labels).
// `class_names` empty: Fashion-MNIST names if a path mentions "fashion", else "0".."K-1".
StatusOr<std::unique_ptr<ImageSource>> open_idx(const std::string& images_path,
                                                const std::string& labels_path,
                                                std::vector<std::string> class_names);

// CIFAR-10 (1 label byte + 3072 CHW bytes per record) or CIFAR-100 (coarse and fine label bytes
// + 3072) binary batch files, concatenated in the given order.
enum class CifarKind { kCifar10, kCifar100Fine, kCifar100Coarse };
StatusOr<std::unique_ptr<ImageSource>> open_cifar(const std::vector<std::string>& files,
                                                  CifarKind kind);

// DIR/<class>/<image>.{png,jpg,jpeg}: classes are the sorted subfolder names; images are decoded
// with stb_image and resized (bilinear) to height x width with `channels` channels (1 or 3).
StatusOr<std::unique_ptr<ImageSource>> open_folder(const std::string& dir, int height, int width,
                                                   int channels);

// Seeded synthetic data (common/synthetic.h).
StatusOr<std::unique_ptr<ImageSource>> open_synthetic(int64_t num, int height, int width,
                                                      int channels, int classes, uint64_t seed);

// Bilinear resize with half-pixel centres (like PIL / torch align_corners=False), HWC uint8.
void resize_bilinear(const uint8_t* src, int src_h, int src_w, int channels, uint8_t* dst,
                     int dst_h, int dst_w);

struct ConvertOptions {
  std::string out_path;
  int gzip_level = 0;
  std::vector<std::string> class_names;  // overrides the source's names when not empty
  std::function<void(int64_t done, int64_t total)> progress;  // may be empty
};

// Streams `source` into a new dataset at out_path (temp file + rename; nothing left on error).
Status convert(ImageSource& source, const ConvertOptions& options);

// Parses "HxW" or "HxWxC" ("28x28", "32x32x3"); `parts` is 2 or 3.
StatusOr<std::vector<int>> parse_shape(const std::string& text, int parts);

}  // namespace resdist::client
