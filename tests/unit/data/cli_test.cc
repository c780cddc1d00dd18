// End-to-end tests of the real `resdist dataset convert|inspect` binary (path from CMake): every
// source format, and every bad input gives a clear message, a non-zero exit and no output file.
#include <gtest/gtest.h>
#include <stb/stb_image_write.h>
#include <zlib.h>

#include <cstdio>
#include <fstream>

#include "common/dataset.h"
#include "test_util.h"

namespace resdist {
namespace {

using testing::TempDir;

struct CliRun {
  int exit_code;
  std::string output;  // stdout + stderr
};

CliRun run_cli(const std::string& args) {
  const std::string cmd = std::string(RESDIST_CLI) + " " + args + " 2>&1";
  CliRun r{-1, ""};
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes, bool gzip = false) {
  if (gzip) {
    gzFile g = gzopen(path.c_str(), "wb");
    gzwrite(g, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(g);
  } else {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
  }
}

void put_u32(std::vector<uint8_t>& v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<uint8_t>(x >> s));
}

// IDX pair with n images of h x w; pixel (i, p) = (i + p) mod 256, label i mod 10.
void write_idx(const std::string& images, const std::string& labels, uint32_t n, uint32_t h,
               uint32_t w, bool gzip, uint32_t image_magic = 0x803, int64_t drop_bytes = 0) {
  std::vector<uint8_t> im, lb;
  put_u32(im, image_magic);
  put_u32(im, n);
  put_u32(im, h);
  put_u32(im, w);
  for (uint32_t i = 0; i < n; ++i)
    for (uint32_t p = 0; p < h * w; ++p) im.push_back(static_cast<uint8_t>(i + p));
  im.resize(im.size() - drop_bytes);
  put_u32(lb, 0x801);
  put_u32(lb, n);
  for (uint32_t i = 0; i < n; ++i) lb.push_back(static_cast<uint8_t>(i % 10));
  write_bytes(images, im, gzip);
  write_bytes(labels, lb, gzip);
}

// Checks a failed run: non-zero exit, message names `file` and `problem`, no .h5 output left.
void expect_failure(const CliRun& r, const TempDir& dir, const std::string& file,
                    const std::string& problem) {
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(file), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(problem), std::string::npos) << r.output;
  for (const std::string& e : dir.entries()) {
    EXPECT_EQ(e.find(".h5"), std::string::npos) << "left behind: " << e;
  }
}

TEST(Cli, SyntheticConvertAndInspect) {
  TempDir dir;
  const std::string out = dir.file("syn.h5");
  CliRun r = run_cli(
      "dataset convert --from synthetic --num 1000 --shape 32x32x3 --classes 5 "
      "--seed 7 --gzip --out " +
      out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("wrote " + out + ": 1000 images 32x32x3, 5 classes"), std::string::npos)
      << r.output;
  r = run_cli("dataset inspect " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("1000 x 32 x 32 x 3 uint8"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("gzip level 4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("valid:        yes"), std::string::npos) << r.output;
  r = run_cli("dataset inspect --json " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"num_samples\": 1000"), std::string::npos) << r.output;
}

TEST(Cli, IdxGzippedAndRaw) {
  for (bool gz : {false, true}) {
    TempDir dir;
    write_idx(dir.file("img"), dir.file("lab"), 25, 5, 4, gz);
    CliRun r =
        run_cli("dataset convert --from idx --images " + dir.file("img") + " --labels " +
                dir.file("lab") + " --class-names a,b,c,d,e,f,g,h,i,j --out " + dir.file("o.h5"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto reader = DatasetReader::open(dir.file("o.h5"));
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_EQ((*reader)->info().num_samples, 25);
    EXPECT_EQ((*reader)->info().height, 5);
    EXPECT_EQ((*reader)->info().width, 4);
    EXPECT_EQ((*reader)->info().class_names[9], "j");
    EXPECT_EQ((*reader)->labels()[13], 3);
    uint8_t px[20];
    ASSERT_TRUE((*reader)->read_images(13, 1, px).ok());
    for (int p = 0; p < 20; ++p) EXPECT_EQ(px[p], 13 + p);
  }
}

TEST(Cli, FashionMnistFromDebianPackage) {
  const std::string base = "/usr/share/datasets/fashion-mnist/";
  if (!std::filesystem::exists(base + "t10k-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  }
  TempDir dir;
  CliRun r = run_cli("dataset convert --from idx --images " + base + "t10k-images-idx3-ubyte.gz " +
                     "--labels " + base + "t10k-labels-idx1-ubyte.gz --out " + dir.file("fm.h5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_cli("dataset inspect " + dir.file("fm.h5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("10000 x 28 x 28 x 1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Ankle boot"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("1000\n"), std::string::npos) << r.output;
}

TEST(Cli, Cifar10RecordsAreTransposedToHwc) {
  TempDir dir;
  std::vector<uint8_t> bytes;
  for (int rec = 0; rec < 3; ++rec) {
    bytes.push_back(static_cast<uint8_t>(rec + 4));  // label
    for (int ch = 0; ch < 3; ++ch)
      for (int p = 0; p < 1024; ++p) bytes.push_back(static_cast<uint8_t>(ch * 80 + p % 50 + rec));
  }
  write_bytes(dir.file("data_batch_1.bin"), bytes);
  CliRun r = run_cli("dataset convert --from cifar10 --input " + dir.file("data_batch_1.bin") +
                     " --out " + dir.file("c.h5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto reader = DatasetReader::open(dir.file("c.h5")).value();
  EXPECT_EQ(reader->info().class_names[4], "deer");
  EXPECT_EQ(reader->labels(), (std::vector<int32_t>{4, 5, 6}));
  std::vector<uint8_t> px(3072);
  ASSERT_TRUE(reader->read_images(2, 1, px.data()).ok());
  for (int p = 0; p < 1024; ++p)
    for (int ch = 0; ch < 3; ++ch) ASSERT_EQ(px[p * 3 + ch], ch * 80 + p % 50 + 2);
  // Truncated: not a multiple of the record size.
  bytes.resize(bytes.size() - 10);
  write_bytes(dir.file("bad.bin"), bytes);
  r = run_cli("dataset convert --from cifar10 --input " + dir.file("bad.bin") + " --out " +
              dir.file("bad.h5"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("bad.bin"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("multiple of the 3073-byte"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir.file("bad.h5")));
}

void write_png(const std::string& path, int w, int h, uint8_t value) {
  std::vector<uint8_t> px(static_cast<size_t>(w) * h * 3, value);
  ASSERT_NE(stbi_write_png(path.c_str(), w, h, 3, px.data(), w * 3), 0);
}

TEST(Cli, FolderOfImages) {
  TempDir dir;
  const std::string in = dir.file("in");
  std::filesystem::create_directories(in + "/cat");
  std::filesystem::create_directories(in + "/dog");
  write_png(in + "/cat/1.png", 10, 8, 200);
  write_png(in + "/cat/2.png", 64, 40, 100);
  write_png(in + "/dog/a.png", 16, 16, 50);
  std::ofstream(in + "/dog/readme.txt") << "not an image, ignored";
  CliRun r = run_cli("dataset convert --from folder --input " + in + " --size 12x12 --out " +
                     dir.file("f.h5"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto reader = DatasetReader::open(dir.file("f.h5")).value();
  EXPECT_EQ(reader->info().num_samples, 3);
  EXPECT_EQ(reader->info().class_names, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(reader->labels(), (std::vector<int32_t>{0, 0, 1}));
  std::vector<uint8_t> px(12 * 12 * 3 * 3);
  ASSERT_TRUE(reader->read_images(0, 3, px.data()).ok());
  EXPECT_EQ(px[0], 200);
  EXPECT_EQ(px[12 * 12 * 3 + 77], 100);
  EXPECT_EQ(px[2 * 12 * 12 * 3 + 5], 50);
}

TEST(CliBadInput, UnreadableImageInFolder) {
  TempDir dir;
  const std::string in = dir.file("in");
  std::filesystem::create_directories(in + "/a");
  write_png(in + "/a/ok.png", 4, 4, 1);
  std::ofstream(in + "/a/broken.png") << "this is not a PNG";
  CliRun r = run_cli("dataset convert --from folder --input " + in + " --size 4x4 --out " +
                     dir.file("f.h5"));
  expect_failure(r, dir, in + "/a/broken.png", "cannot decode image");
}

TEST(CliBadInput, IdxWrongMagic) {
  TempDir dir;
  write_idx(dir.file("img"), dir.file("lab"), 5, 4, 4, false, 0x802);
  CliRun r = run_cli("dataset convert --from idx --images " + dir.file("img") + " --labels " +
                     dir.file("lab") + " --out " + dir.file("o.h5"));
  expect_failure(r, dir, dir.file("img"), "magic number 0x00000802, expected 0x00000803");
}

TEST(CliBadInput, IdxTruncatedBody) {
  for (bool gz : {false, true}) {
    TempDir dir;
    write_idx(dir.file("img"), dir.file("lab"), 5, 4, 4, gz, 0x803, 7);
    CliRun r = run_cli("dataset convert --from idx --images " + dir.file("img") + " --labels " +
                       dir.file("lab") + " --out " + dir.file("o.h5"));
    expect_failure(r, dir, dir.file("img"), "truncated body");
  }
}

TEST(CliBadInput, IdxTruncatedGzipStream) {
  TempDir dir;
  write_idx(dir.file("img.gz"), dir.file("lab.gz"), 200, 28, 28, true);
  std::filesystem::resize_file(dir.file("img.gz"),
                               std::filesystem::file_size(dir.file("img.gz")) / 2);
  CliRun r = run_cli("dataset convert --from idx --images " + dir.file("img.gz") + " --labels " +
                     dir.file("lab.gz") + " --out " + dir.file("o.h5"));
  expect_failure(r, dir, dir.file("img.gz"), "truncated");
}

TEST(CliBadInput, MissingInputFile) {
  TempDir dir;
  CliRun r = run_cli("dataset convert --from idx --images " + dir.file("nope") + " --labels " +
                     dir.file("nope2") + " --out " + dir.file("o.h5"));
  expect_failure(r, dir, dir.file("nope"), "No such file");
}

TEST(CliBadInput, InspectInvalidFiles) {
  TempDir dir;
  std::ofstream(dir.file("text.h5")) << "plain text";
  CliRun r = run_cli("dataset inspect " + dir.file("text.h5"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(dir.file("text.h5") + ": not an HDF5 file"), std::string::npos)
      << r.output;
  testing::RawSpec s;
  s.image_dims = {10, 4, 4};
  testing::write_raw(dir.file("rank.h5"), s);
  r = run_cli("dataset inspect " + dir.file("rank.h5"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("/images has 3 dimensions, expected 4 (N,H,W,C)"), std::string::npos)
      << r.output;
  r = run_cli("dataset inspect " + dir.file("absent.h5"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("absent.h5: no such file"), std::string::npos) << r.output;
}

TEST(CliBadInput, MissingFlags) {
  TempDir dir;
  CliRun r =
      run_cli("dataset convert --from folder --input " + dir.path() + " --out " + dir.file("o.h5"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--size is required"), std::string::npos) << r.output;
  r = run_cli("dataset convert --from synthetic --num 10 --shape 28x28 --out " + dir.file("o.h5"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("expected HxWxC"), std::string::npos) << r.output;
  r = run_cli("dataset convert --from mnist --out " + dir.file("o.h5"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(dir.entries().empty());
}

}  // namespace
}  // namespace resdist
