// Dataset schema (common/dataset.h): round trip through the writer and reader, h5py-written files,
// and one test per kind of bad file, each naming the file and the problem.
#include "common/dataset.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "test_util.h"

namespace resdist {
namespace {

using testing::RawSpec;
using testing::TempDir;

// Expects `path` to fail validation with a message containing the path and `needle`.
void expect_invalid(const std::string& path, const std::string& needle) {
  auto r = DatasetReader::open(path);
  ASSERT_FALSE(r.ok()) << "expected " << path << " to be rejected (" << needle << ")";
  const std::string msg(r.status().message());
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find(needle), std::string::npos) << msg;
}

TEST(Dataset, RoundTrip) {
  TempDir dir;
  const std::string path = dir.file("d.h5");
  auto data = testing::write_synthetic(path, 1000, 8, 6, 3, 7, 5, /*chunk_bytes=*/8 * 6 * 3 * 64);
  auto r = DatasetReader::open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  const DatasetInfo& info = (*r)->info();
  EXPECT_EQ(info.num_samples, 1000);
  EXPECT_EQ(info.height, 8);
  EXPECT_EQ(info.width, 6);
  EXPECT_EQ(info.channels, 3);
  EXPECT_EQ(info.num_classes(), 7);
  EXPECT_EQ(info.class_names[3], "c3");
  EXPECT_EQ(info.source, "test");
  EXPECT_EQ(info.chunk_samples, 64);
  EXPECT_TRUE(info.chunks_whole_images);
  EXPECT_EQ(info.gzip_level, -1);
  EXPECT_EQ((*r)->labels(), data.labels);
  std::vector<uint8_t> images(data.images.size());
  ASSERT_TRUE((*r)->read_images(0, 1000, images.data()).ok());
  EXPECT_EQ(images, data.images);
  std::vector<uint8_t> some(5 * 8 * 6 * 3);
  ASSERT_TRUE((*r)->read_images(100, 5, some.data()).ok());
  EXPECT_TRUE(std::equal(some.begin(), some.end(), data.images.begin() + 100 * 144));
  EXPECT_FALSE((*r)->read_images(998, 5, some.data()).ok());
  // mean / std per channel of pixel/255.
  for (int c = 0; c < 3; ++c) {
    double s = 0, sq = 0;
    const size_t count = data.images.size() / 3;
    for (size_t i = c; i < data.images.size(); i += 3) {
      s += data.images[i] / 255.0;
      sq += (data.images[i] / 255.0) * (data.images[i] / 255.0);
    }
    const double mean = s / count, sd = std::sqrt(sq / count - mean * mean);
    EXPECT_NEAR(info.mean[c], mean, 1e-5);
    EXPECT_NEAR(info.std[c], sd, 1e-4);
  }
  int64_t total = 0;
  for (int64_t n : (*r)->class_counts()) total += n;
  EXPECT_EQ(total, 1000);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"d.h5"});  // no temp file left
}

TEST(Dataset, GzipRoundTrip) {
  TempDir dir;
  const std::string path = dir.file("g.h5");
  auto data = testing::write_synthetic(path, 300, 28, 28, 1, 10, 2, kDefaultChunkBytes, 4);
  auto r = DatasetReader::open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->info().gzip_level, 4);
  std::vector<uint8_t> images(data.images.size());
  ASSERT_TRUE((*r)->read_images(0, 300, images.data()).ok());
  EXPECT_EQ(images, data.images);
}

TEST(Dataset, UnfinishedWriterLeavesNothing) {
  TempDir dir;
  const std::string path = dir.file("partial.h5");
  {
    DatasetWriteOptions o;
    o.num_samples = 10;
    o.height = o.width = 4;
    o.channels = 1;
    o.class_names = {"a", "b"};
    auto w = DatasetWriter::create(path, o);
    ASSERT_TRUE(w.ok());
    std::vector<uint8_t> img(5 * 16, 1);
    std::vector<int32_t> lab(5, 1);
    ASSERT_TRUE((*w)->append(img.data(), lab.data(), 5).ok());
    lab[2] = 2;  // out of range
    auto s = (*w)->append(img.data(), lab.data(), 5);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("label of sample 7 is 2"), std::string::npos) << s;
    EXPECT_FALSE((*w)->finish().ok());  // only 5 of 10 written
  }
  EXPECT_TRUE(dir.entries().empty());
}

TEST(Dataset, H5pyWrittenFileIsAccepted) {
  if (std::system("/usr/bin/python3 -c 'import h5py, numpy' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 with h5py and numpy is not available";
  }
  TempDir dir;
  const std::string path = dir.file("py.h5");
  const std::string script = dir.file("w.py");
  std::ofstream(script) << R"(import sys, h5py, numpy as np
rng = np.random.default_rng(0)
x = rng.integers(0, 256, size=(50, 5, 7, 3), dtype=np.uint8)
y = (np.arange(50) % 4).astype(np.int32)
with h5py.File(sys.argv[1], 'w') as f:
    f.create_dataset('images', data=x, chunks=(10, 5, 7, 3))
    f.create_dataset('labels', data=y)
    f.attrs['format'] = 'resdist-dataset'
    f.attrs['format_version'] = 1
    f.attrs['class_names'] = ['cat', 'dog', 'eel', 'fox']
    f.attrs['mean'] = (x / 255.0).mean(axis=(0, 1, 2))
    f.attrs['std'] = (x / 255.0).std(axis=(0, 1, 2))
    f.attrs['source'] = np.bytes_(b'h5py test')
x.tofile(sys.argv[1] + '.raw')
)";
  ASSERT_EQ(std::system(("/usr/bin/python3 " + script + " " + path).c_str()), 0);
  auto r = DatasetReader::open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->info().num_samples, 50);
  EXPECT_EQ((*r)->info().class_names, (std::vector<std::string>{"cat", "dog", "eel", "fox"}));
  EXPECT_EQ((*r)->info().source, "h5py test");
  EXPECT_EQ((*r)->info().chunk_samples, 10);
  std::vector<uint8_t> images(50 * 5 * 7 * 3), raw(images.size());
  ASSERT_TRUE((*r)->read_images(0, 50, images.data()).ok());
  std::ifstream(path + ".raw", std::ios::binary)
      .read(reinterpret_cast<char*>(raw.data()), raw.size());
  EXPECT_EQ(images, raw);
}

// ---- bad input: one test each -----------------------------------------------------------------

TEST(DatasetBadInput, MissingFile) {
  TempDir dir;
  expect_invalid(dir.file("nope.h5"), "no such file");
}

TEST(DatasetBadInput, NotHdf5) {
  TempDir dir;
  std::ofstream(dir.file("text.h5")) << "hello, I am not HDF5\n";
  expect_invalid(dir.file("text.h5"), "not an HDF5 file");
}

TEST(DatasetBadInput, Truncated) {
  TempDir dir;
  const std::string path = dir.file("t.h5");
  testing::write_synthetic(path, 2000, 28, 28, 1);
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  expect_invalid(path, "truncated");
}

TEST(DatasetBadInput, MissingImages) {
  TempDir dir;
  RawSpec s;
  s.images = false;
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "/images is missing");
}

TEST(DatasetBadInput, MissingLabels) {
  TempDir dir;
  RawSpec s;
  s.labels = false;
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "/labels is missing");
}

TEST(DatasetBadInput, WrongImageRank) {
  TempDir dir;
  RawSpec s;
  s.image_dims = {10, 4, 4};
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "/images has 3 dimensions, expected 4 (N,H,W,C)");
}

TEST(DatasetBadInput, WrongImageType) {
  TempDir dir;
  RawSpec s;
  s.image_type = H5T_IEEE_F32LE;
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "/images has element type float32, expected uint8");
}

TEST(DatasetBadInput, WrongLabelRank) {
  TempDir dir;
  RawSpec s;
  s.label_dims = {10, 1};
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "/labels has 2 dimensions, expected 1 (N)");
}

TEST(DatasetBadInput, WrongLabelType) {
  TempDir dir;
  RawSpec s;
  s.label_type = H5T_STD_I64LE;
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "/labels has element type int64, expected int32");
}

TEST(DatasetBadInput, LabelOutOfRange) {
  TempDir dir;
  RawSpec s;
  s.label_values = {0, 1, 2, 3, 12, 5, 6, 7, 8, 9};
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "/labels[4] is 12, expected 0 <= label < 10");
  s.label_values = {0, -1, 2, 3, 4, 5, 6, 7, 8, 9};
  testing::write_raw(dir.file("b.h5"), s);
  expect_invalid(dir.file("b.h5"), "/labels[1] is -1");
}

TEST(DatasetBadInput, CountMismatch) {
  TempDir dir;
  RawSpec s;
  s.label_dims = {9};
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "/images has 10 images but /labels has 9 labels");
}

TEST(DatasetBadInput, ZeroImages) {
  TempDir dir;
  RawSpec s;
  s.image_dims = {0, 4, 4, 1};
  s.label_dims = {0};
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "/images has 0 images, expected >= 1");
}

TEST(DatasetBadInput, AbsurdDimensions) {
  TempDir dir;
  RawSpec s;
  s.image_dims = {10, 100000, 100000, 3};  // declared only; chunked storage is never allocated
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "/images has shape (10,100000,100000,3)");
  s.image_dims = {10, 4, 4, 7};
  testing::write_raw(dir.file("b.h5"), s);
  expect_invalid(dir.file("b.h5"), "C in [1, 4]");
}

TEST(DatasetBadInput, MissingFormatAttributes) {
  TempDir dir;
  RawSpec s;
  s.format = false;
  testing::write_raw(dir.file("a.h5"), s);
  expect_invalid(dir.file("a.h5"), "attribute format is missing");
  s = RawSpec();
  s.mean_std = false;
  testing::write_raw(dir.file("b.h5"), s);
  expect_invalid(dir.file("b.h5"), "attribute mean is missing");
  s = RawSpec();
  s.mean_std_len = 3;
  testing::write_raw(dir.file("c.h5"), s);
  expect_invalid(dir.file("c.h5"), "attribute mean has 3 values, expected 1 (channels)");
  s = RawSpec();
  s.class_names = false;
  testing::write_raw(dir.file("d.h5"), s);
  expect_invalid(dir.file("d.h5"), "attribute class_names is missing");
}

TEST(DatasetBadInput, Directory) {
  TempDir dir;
  expect_invalid(dir.path(), "is a directory");
}

}  // namespace
}  // namespace resdist
