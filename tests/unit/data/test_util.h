// Helpers for the data tests: a temporary directory per test and builders of (valid or
// deliberately broken) HDF5 dataset files through the raw HDF5 wrappers.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/common/temp_dir.h"
#include "common/dataset.h"
#include "common/hdf5.h"
#include "common/synthetic.h"

namespace resdist::testing {

inline std::vector<std::string> numbered_classes(int k) {
  std::vector<std::string> v;
  for (int i = 0; i < k; ++i) v.push_back(absl::StrCat("c", i));
  return v;
}

// Writes a valid dataset of synthetic images; returns the data written.
inline SyntheticData write_synthetic(const std::string& path, int64_t n, int h, int w, int c,
                                     int classes = 10, uint64_t seed = 1,
                                     int64_t chunk_bytes = kDefaultChunkBytes, int gzip = 0) {
  SyntheticSpec spec{n, h, w, c, classes, seed};
  auto data = make_synthetic(spec);
  EXPECT_TRUE(data.ok()) << data.status();
  DatasetWriteOptions o;
  o.num_samples = n;
  o.height = h;
  o.width = w;
  o.channels = c;
  o.class_names = numbered_classes(classes);
  o.source = "test";
  o.gzip_level = gzip;
  o.chunk_bytes = chunk_bytes;
  Status s = write_dataset(path, o, data->images.data(), data->labels.data());
  EXPECT_TRUE(s.ok()) << s;
  return std::move(data).value();
}

// A raw file with chosen shapes and types, for the bad-input tests.
struct RawSpec {
  bool images = true;
  std::vector<hsize_t> image_dims = {10, 4, 4, 1};
  hid_t image_type = H5T_STD_U8LE;
  bool labels = true;
  std::vector<hsize_t> label_dims = {10};
  hid_t label_type = H5T_STD_I32LE;
  std::vector<int32_t> label_values;  // default 0, 1, 2, ... mod classes
  int classes = 10;
  bool format = true;
  bool mean_std = true;
  int mean_std_len = 1;
  bool class_names = true;
  bool write_data = true;
};

inline void write_raw(const std::string& path, const RawSpec& spec) {
  auto f = h5::File::create(path);
  ASSERT_TRUE(f.ok()) << f.status();
  if (spec.images) {
    std::vector<hsize_t> chunk = spec.image_dims;
    if (!chunk.empty()) chunk[0] = std::max<hsize_t>(1, std::min<hsize_t>(chunk[0], 4));
    for (size_t i = 1; i < chunk.size(); ++i) chunk[i] = std::min<hsize_t>(chunk[i], 64);
    auto d = f->create_dataset("/images", spec.image_type, spec.image_dims, chunk, 0);
    ASSERT_TRUE(d.ok()) << d.status();
  }
  if (spec.labels) {
    std::vector<hsize_t> chunk = spec.label_dims;
    for (auto& x : chunk) x = std::max<hsize_t>(1, std::min<hsize_t>(x, 1024));
    auto d = f->create_dataset("/labels", spec.label_type, spec.label_dims, chunk, 0);
    ASSERT_TRUE(d.ok()) << d.status();
    if (spec.write_data && spec.label_dims.size() == 1 && spec.label_dims[0] > 0) {
      std::vector<int32_t> v = spec.label_values;
      if (v.empty()) {
        for (hsize_t i = 0; i < spec.label_dims[0]; ++i) v.push_back(int32_t(i) % spec.classes);
      }
      ASSERT_TRUE(d->write_rows(H5T_NATIVE_INT32, 0, int64_t(v.size()), v.data()).ok());
    }
  }
  if (spec.format) {
    ASSERT_TRUE(f->write_string_attribute("/", "format", kDatasetFormatName).ok());
    ASSERT_TRUE(f->write_int_attribute("/", "format_version", kDatasetFormatVersion).ok());
  }
  if (spec.class_names) {
    ASSERT_TRUE(
        f->write_strings_attribute("/", "class_names", numbered_classes(spec.classes)).ok());
  }
  if (spec.mean_std) {
    ASSERT_TRUE(
        f->write_floats_attribute("/", "mean", std::vector<float>(spec.mean_std_len, 0.5f)).ok());
    ASSERT_TRUE(
        f->write_floats_attribute("/", "std", std::vector<float>(spec.mean_std_len, 0.25f)).ok());
  }
  ASSERT_TRUE(f->close().ok());
}

}  // namespace resdist::testing
