// The resdist HDF5 dataset schema (docs/dataset-format.md): open + validate a dataset file, read
// its attributes, labels and image rows, and write a new one atomically. No decoding or loading
// policy here; converters live in client/, the training loader in worker/data/.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/hdf5.h"
#include "common/status.h"

namespace resdist {

inline constexpr char kDatasetFormatName[] = "resdist-dataset";
inline constexpr int kDatasetFormatVersion = 1;
inline constexpr char kImagesPath[] = "/images";
inline constexpr char kLabelsPath[] = "/labels";

// Limits beyond which a declared shape is treated as damage rather than data.
inline constexpr int64_t kMaxImageSide = 16384;
inline constexpr int64_t kMaxImageBytes = int64_t{1} << 28;  // 256 MiB per image
inline constexpr int64_t kMaxChannels = 4;
inline constexpr int64_t kMaxClasses = 1 << 20;
inline constexpr int64_t kDefaultChunkBytes = int64_t{1} << 20;  // ~1 MiB of whole images

struct DatasetInfo {
  std::string path;
  int64_t num_samples = 0;               // N
  int height = 0;                        // H
  int width = 0;                         // W
  int channels = 0;                      // C
  std::vector<std::string> class_names;  // [num_classes]; labels are in [0, num_classes)
  std::vector<float> mean;               // [C], per channel, of pixel / 255 over the whole file
  std::vector<float> std;                // [C], per channel, of pixel / 255 over the whole file
  std::string source;                    // free text: where the data came from ("" if absent)
  int format_version = 0;
  int64_t chunk_samples = 0;               // images per /images chunk (0: contiguous, not chunked)
  bool chunks_whole_images = true;         // chunk covers full H, W, C (else reads are slower)
  int gzip_level = -1;                     // -1: not compressed
  std::vector<std::string> other_filters;  // filters besides gzip (e.g. shuffle)

  int num_classes() const { return static_cast<int>(class_names.size()); }
  int64_t image_bytes() const { return int64_t{height} * width * channels; }
};

// An open, validated dataset file. Validation checks the format attributes, ranks, dtypes,
// shapes, mean/std and that every label is in range; each error reads like
// "dataset /data/x.h5: /images has 3 dimensions, expected 4 (N,H,W,C)".
class DatasetReader {
 public:
  static StatusOr<std::unique_ptr<DatasetReader>> open(const std::string& path);

  const DatasetInfo& info() const { return info_; }
  // All labels, read (and checked) at open: [N].
  const std::vector<int32_t>& labels() const { return labels_; }
  // Images per class, [num_classes].
  std::vector<int64_t> class_counts() const;

  // Reads images [first, first + count) into out (count, H, W, C) with one hyperslab read.
  Status read_images(int64_t first, int64_t count, uint8_t* out) const;

 private:
  DatasetReader() = default;
  DatasetInfo info_;
  h5::File file_;
  h5::Dataset images_;
  std::vector<int32_t> labels_;
};

struct DatasetWriteOptions {
  int64_t num_samples = 0;
  int height = 0, width = 0, channels = 0;
  std::vector<std::string> class_names;
  std::string source;
  int gzip_level = 0;                        // 0: none, 1..9: deflate
  int64_t chunk_bytes = kDefaultChunkBytes;  // target bytes per /images chunk (whole images)
};

// Writes a dataset to `<path>.tmp-<pid>` and renames it to `path` in finish(), after writing
// the mean/std it accumulated and the format attributes. Destroying an unfinished writer
// removes the temporary file, so a failed conversion leaves nothing that looks valid.
class DatasetWriter {
 public:
  static StatusOr<std::unique_ptr<DatasetWriter>> create(const std::string& path,
                                                         const DatasetWriteOptions& options);
  ~DatasetWriter();

  // Appends `count` samples: images (count, H, W, C), labels (count) in [0, num_classes).
  Status append(const uint8_t* images, const int32_t* labels, int64_t count);
  int64_t written() const { return written_; }
  const std::string& temp_path() const { return temp_path_; }

  // Requires exactly num_samples appended. Writes attributes, fsyncs and renames.
  Status finish();

 private:
  DatasetWriter() = default;
  std::string path_, temp_path_;
  DatasetWriteOptions options_;
  h5::File file_;
  h5::Dataset images_, labels_;
  int64_t written_ = 0;
  bool finished_ = false;
  std::vector<uint64_t> sum_;     // [C] sum of pixels
  std::vector<uint64_t> sum_sq_;  // [C] sum of squared pixels
};

// Writes a whole in-memory dataset (images (N, H, W, C), labels (N)) with DatasetWriter.
Status write_dataset(const std::string& path, const DatasetWriteOptions& options,
                     const uint8_t* images, const int32_t* labels);

// Images per chunk for a target chunk size in bytes (at least 1, at most num_samples).
int64_t chunk_samples_for(int64_t image_bytes, int64_t num_samples, int64_t chunk_bytes);

}  // namespace resdist
