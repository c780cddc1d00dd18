// Loader (worker/data/loader.h): every shard sample exactly once, normalization, layouts,
// determinism, crop/flip against a naive reference, in-memory == streaming, resume, eval padding.
#include "worker/data/loader.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "test_util.h"

namespace resdist::data {
namespace {

using resdist::testing::TempDir;

struct Fixture {
  TempDir dir;
  std::string path;
  SyntheticData data;
  int h, w, c;
  Fixture(int64_t n, int h_, int w_, int c_, int64_t chunk_images = 16)
      : path(dir.file("d.h5")), h(h_), w(w_), c(c_) {
    data = resdist::testing::write_synthetic(path, n, h, w, c, 10, 3, chunk_images * h * w * c);
  }
  const uint8_t* image(int64_t i) const { return data.images.data() + i * h * w * c; }
};

struct Batch {
  std::vector<float> images;
  std::vector<int32_t> labels;
  std::vector<int64_t> indices;
  int valid;
};

std::vector<Batch> drain(Loader& loader) {
  std::vector<Batch> out;
  BatchView b;
  while (loader.next(b)) {
    Batch copy;
    copy.images.assign(b.images, b.images + b.size * loader.image_floats());
    copy.labels.assign(b.labels, b.labels + b.size);
    copy.indices.assign(b.indices, b.indices + b.size);
    copy.valid = b.valid;
    EXPECT_EQ(b.step, static_cast<int64_t>(out.size()));
    out.push_back(std::move(copy));
  }
  EXPECT_TRUE(loader.status().ok()) << loader.status();
  return out;
}

LoaderOptions base_options(const std::string& path) {
  LoaderOptions o;
  o.path = path;
  o.batch_size = 32;
  o.seed = 11;
  o.window_chunks = 2;
  return o;
}

TEST(Loader, EverySampleOnceAndNormalized) {
  Fixture f(500, 6, 5, 3);
  for (InMemoryMode mode : {InMemoryMode::kAlways, InMemoryMode::kNever}) {
    for (int world : {1, 3}) {
      std::set<int64_t> seen;
      for (int rank = 0; rank < world; ++rank) {
        LoaderOptions o = base_options(f.path);
        o.in_memory = mode;
        o.rank = rank;
        o.world_size = world;
        o.layout = BatchLayout::kNHWC;
        auto loader = Loader::open(o);
        ASSERT_TRUE(loader.ok()) << loader.status();
        EXPECT_EQ((*loader)->in_memory(), mode == InMemoryMode::kAlways);
        ASSERT_TRUE((*loader)->start_epoch(2).ok());
        EXPECT_EQ((*loader)->samples_in_epoch(), 500 / world);
        const DatasetInfo& info = (*loader)->info();
        auto batches = drain(**loader);
        EXPECT_EQ(static_cast<int64_t>(batches.size()), (*loader)->batches_in_epoch());
        for (const Batch& b : batches) {
          for (size_t j = 0; j < b.indices.size(); ++j) {
            const int64_t idx = b.indices[j];
            EXPECT_TRUE(seen.insert(idx).second) << "sample " << idx << " twice";
            EXPECT_EQ(b.labels[j], f.data.labels[idx]);
            const uint8_t* src = f.image(idx);
            const float* got = b.images.data() + j * 90;
            for (int k = 0; k < 90; ++k) {
              const int ch = k % 3;
              const float want = (src[k] / 255.0f - info.mean[ch]) / info.std[ch];
              ASSERT_NEAR(got[k], want, 1e-4) << "sample " << idx << " value " << k;
            }
          }
        }
      }
      EXPECT_EQ(static_cast<int64_t>(seen.size()), 500 / world * world);
    }
  }
}

TEST(Loader, NormalizationStatisticsOverride) {
  Fixture f(40, 4, 4, 3);
  LoaderOptions o = base_options(f.path);
  o.shuffle = false;
  o.layout = BatchLayout::kNHWC;
  o.normalize_mean = {0.5f, 0.25f, 0.75f};
  o.normalize_std = {0.2f, 0.4f, 0.1f};
  auto loader = Loader::open(o);
  ASSERT_TRUE(loader.ok()) << loader.status();
  ASSERT_TRUE((*loader)->start_epoch(0).ok());
  auto batches = drain(**loader);
  ASSERT_FALSE(batches.empty());
  const Batch& b = batches[0];
  for (int k = 0; k < 48; ++k) {
    const int ch = k % 3;
    const float want = (f.image(b.indices[0])[k] / 255.0f - o.normalize_mean[ch]) / o.normalize_std[ch];
    ASSERT_NEAR(b.images[k], want, 1e-4) << k;
  }
  o.normalize_std = {0.2f, 0.f, 0.1f};
  auto bad = Loader::open(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("normalize_std value 0 is not allowed"),
            std::string::npos) << bad.status();
  o.normalize_std = {0.2f};
  bad = Loader::open(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("expected 3 (the channels of"),
            std::string::npos) << bad.status();
}

TEST(Loader, NchwMatchesNhwc) {
  Fixture f(100, 7, 9, 3);
  LoaderOptions o = base_options(f.path);
  o.augment.crop_padding = 2;
  o.augment.horizontal_flip = true;
  o.layout = BatchLayout::kNCHW;
  auto a = Loader::open(o);
  o.layout = BatchLayout::kNHWC;
  auto b = Loader::open(o);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE((*a)->start_epoch(0).ok());
  ASSERT_TRUE((*b)->start_epoch(0).ok());
  auto ba = drain(**a), bb = drain(**b);
  ASSERT_EQ(ba.size(), bb.size());
  for (size_t i = 0; i < ba.size(); ++i) {
    ASSERT_EQ(ba[i].indices, bb[i].indices);
    for (size_t n = 0; n < ba[i].indices.size(); ++n) {
      for (int ch = 0; ch < 3; ++ch) {
        for (int y = 0; y < 7; ++y) {
          for (int x = 0; x < 9; ++x) {
            ASSERT_EQ(ba[i].images[((n * 3 + ch) * 7 + y) * 9 + x],
                      bb[i].images[((n * 7 + y) * 9 + x) * 3 + ch]);
          }
        }
      }
    }
  }
}

TEST(Loader, DeterministicPerSeedAndEpoch) {
  Fixture f(200, 4, 4, 1);
  LoaderOptions o = base_options(f.path);
  o.augment.crop_padding = 1;
  o.augment.horizontal_flip = true;
  auto a = Loader::open(o).value();
  auto b = Loader::open(o).value();
  ASSERT_TRUE(a->start_epoch(1).ok());
  ASSERT_TRUE(b->start_epoch(1).ok());
  auto ea = drain(*a), eb = drain(*b);
  ASSERT_EQ(ea.size(), eb.size());
  for (size_t i = 0; i < ea.size(); ++i) {
    EXPECT_EQ(ea[i].indices, eb[i].indices);
    EXPECT_EQ(ea[i].images, eb[i].images);
  }
  ASSERT_TRUE(a->start_epoch(2).ok());
  auto e2 = drain(*a);
  EXPECT_NE(e2[0].indices, ea[0].indices);
}

// Naive reference: pad with zeros, crop at (dy, dx), optionally mirror, normalize.
std::vector<float> reference(const uint8_t* src, int h, int w, int c, int pad, int dy, int dx,
                             bool flip, const DatasetInfo& info) {
  std::vector<float> out(static_cast<size_t>(h) * w * c);  // HWC
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      const int xs = flip ? w - 1 - x : x;
      const int py = y + dy - pad, px = xs + dx - pad;
      for (int ch = 0; ch < c; ++ch) {
        const int v = (py >= 0 && py < h && px >= 0 && px < w) ? src[(py * w + px) * c + ch] : 0;
        out[(y * w + x) * c + ch] = (v / 255.0f - info.mean[ch]) / info.std[ch];
      }
    }
  }
  return out;
}

bool close(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::abs(a[i] - b[i]) > 1e-5f * (1 + std::abs(b[i]))) return false;
  }
  return true;
}

TEST(Loader, CropAndFlipMatchReference) {
  const int h = 5, w = 6, c = 2, pad = 2;
  DatasetInfo info;
  info.height = h;
  info.width = w;
  info.channels = c;
  info.mean = {0.25f, 0.5f};
  info.std = {0.5f, 0.125f};
  std::vector<uint8_t> img(h * w * c);
  for (size_t i = 0; i < img.size(); ++i) img[i] = static_cast<uint8_t>(1 + i * 7);
  AugmentOptions aug;
  aug.crop_padding = pad;
  aug.horizontal_flip = true;
  std::set<std::tuple<int, int, bool>> used;
  for (int64_t sample = 0; sample < 400; ++sample) {
    std::vector<float> nhwc(img.size()), nchw(img.size());
    transform_image(info, aug, BatchLayout::kNHWC, 9, 1, sample, img.data(), nhwc.data());
    transform_image(info, aug, BatchLayout::kNCHW, 9, 1, sample, img.data(), nchw.data());
    // Exactly one (dy, dx, flip) must explain the output.
    int matches = 0;
    for (int dy = 0; dy <= 2 * pad; ++dy) {
      for (int dx = 0; dx <= 2 * pad; ++dx) {
        for (bool flip : {false, true}) {
          if (close(reference(img.data(), h, w, c, pad, dy, dx, flip, info), nhwc)) {
            ++matches;
            used.insert({dy, dx, flip});
          }
        }
      }
    }
    EXPECT_EQ(matches, 1) << "sample " << sample;
    for (int ch = 0; ch < c; ++ch) {
      for (int p = 0; p < h * w; ++p) ASSERT_EQ(nchw[ch * h * w + p], nhwc[p * c + ch]);
    }
  }
  // All 5 * 5 * 2 augmentations occur.
  EXPECT_EQ(used.size(), 50u);
}

TEST(Loader, CropWithoutFlipAndFlipWithoutCrop) {
  DatasetInfo info;
  info.height = 3;
  info.width = 4;
  info.channels = 1;
  info.mean = {0};
  info.std = {1.0f / 255.0f};  // output = pixel value
  const uint8_t img[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  AugmentOptions flip_only;
  flip_only.horizontal_flip = true;
  int flipped = 0;
  for (int64_t s = 0; s < 50; ++s) {
    float out[12];
    transform_image(info, flip_only, BatchLayout::kNCHW, 1, 0, s, img, out);
    const float mirrored[12] = {4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9};
    const bool is_flipped = std::equal(out, out + 12, mirrored);
    EXPECT_TRUE(is_flipped || std::equal(out, out + 12, img));
    flipped += is_flipped;
  }
  EXPECT_GT(flipped, 10);
  EXPECT_LT(flipped, 40);
  AugmentOptions none;
  float out[12];
  transform_image(info, none, BatchLayout::kNHWC, 1, 0, 3, img, out);
  EXPECT_TRUE(std::equal(out, out + 12, img));
}

TEST(Loader, InMemoryAndStreamingIdentical) {
  Fixture f(777, 8, 8, 3, /*chunk_images=*/10);
  for (int world : {1, 2}) {
    LoaderOptions o = base_options(f.path);
    o.world_size = world;
    o.rank = world - 1;
    o.augment.crop_padding = 2;
    o.augment.horizontal_flip = true;
    o.window_chunks = 3;
    o.in_memory = InMemoryMode::kAlways;
    auto mem = Loader::open(o).value();
    o.in_memory = InMemoryMode::kNever;
    auto disk = Loader::open(o).value();
    EXPECT_TRUE(mem->in_memory());
    EXPECT_FALSE(disk->in_memory());
    for (int epoch : {0, 1}) {
      ASSERT_TRUE(mem->start_epoch(epoch).ok());
      ASSERT_TRUE(disk->start_epoch(epoch).ok());
      auto a = drain(*mem), b = drain(*disk);
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].indices, b[i].indices);
        EXPECT_EQ(a[i].labels, b[i].labels);
        EXPECT_EQ(a[i].images, b[i].images);
      }
    }
  }
}

TEST(Loader, AutoInMemoryThreshold) {
  Fixture f(100, 4, 4, 1);
  LoaderOptions o = base_options(f.path);
  o.in_memory_threshold_bytes = 100 * 16;
  EXPECT_TRUE(Loader::open(o).value()->in_memory());
  o.in_memory_threshold_bytes = 100 * 16 - 1;
  EXPECT_FALSE(Loader::open(o).value()->in_memory());
}

TEST(Loader, ResumeYieldsTheRestOfThePlan) {
  Fixture f(300, 4, 4, 1);
  // First run: 2 ranks, batch 8, 5 steps; resume on 3 ranks.
  const int64_t consumed = samples_consumed_at(5, 8 * 2);
  std::set<int64_t> first, rest;
  for (int rank = 0; rank < 2; ++rank) {
    LoaderOptions o = base_options(f.path);
    o.batch_size = 8;
    o.world_size = 2;
    o.rank = rank;
    auto l = Loader::open(o).value();
    ASSERT_TRUE(l->start_epoch(4).ok());
    BatchView b;
    for (int s = 0; s < 5 && l->next(b); ++s) first.insert(b.indices, b.indices + b.size);
  }
  for (int rank = 0; rank < 3; ++rank) {
    LoaderOptions o = base_options(f.path);
    o.batch_size = 8;
    o.world_size = 3;
    o.rank = rank;
    auto l = Loader::open(o).value();
    ASSERT_TRUE(l->start_epoch(4, consumed).ok());
    for (const Batch& b : drain(*l)) {
      for (int64_t i : b.indices) {
        EXPECT_FALSE(first.count(i)) << i;
        EXPECT_TRUE(rest.insert(i).second) << i;
      }
    }
  }
  EXPECT_EQ(first.size(), 80u);
  EXPECT_EQ(first.size() + rest.size(), 300u - (300 - 80) % 3);
}

TEST(Loader, EvalPadCountsEachSampleOnce) {
  Fixture f(103, 4, 4, 1);
  std::map<int64_t, int> counted;
  int64_t total_valid = 0;
  for (int rank = 0; rank < 4; ++rank) {
    LoaderOptions o = base_options(f.path);
    o.shuffle = false;
    o.remainder = RemainderPolicy::kPad;
    o.world_size = 4;
    o.rank = rank;
    o.batch_size = 10;
    auto l = Loader::open(o).value();
    ASSERT_TRUE(l->start_epoch(0).ok());
    auto batches = drain(*l);
    EXPECT_EQ(batches.size(), 3u);  // 26 samples per rank: 10 + 10 + 6, same on every rank
    for (const Batch& b : batches) {
      for (int j = 0; j < b.valid; ++j) ++counted[b.indices[j]];
      total_valid += b.valid;
    }
  }
  EXPECT_EQ(total_valid, 103);
  EXPECT_EQ(counted.size(), 103u);
  for (const auto& [idx, n] : counted) EXPECT_EQ(n, 1) << idx;
}

TEST(Loader, DropLastBatchAndNextInto) {
  Fixture f(100, 4, 4, 1);
  LoaderOptions o = base_options(f.path);
  o.batch_size = 30;
  o.drop_last_batch = true;
  auto l = Loader::open(o).value();
  ASSERT_TRUE(l->start_epoch(0).ok());
  EXPECT_EQ(l->batches_in_epoch(), 3);
  std::vector<float> images(30 * 16);
  std::vector<int32_t> labels(30);
  BatchView view;
  int batches = 0;
  while (l->next_into(images.data(), labels.data(), &view)) {
    EXPECT_EQ(view.size, 30);
    EXPECT_EQ(view.images, images.data());
    for (int j = 0; j < 30; ++j) EXPECT_EQ(labels[j], f.data.labels[view.indices[j]]);
    ++batches;
  }
  EXPECT_EQ(batches, 3);
}

TEST(Loader, RestartMidEpochAndNoEpoch) {
  Fixture f(400, 4, 4, 1);
  LoaderOptions o = base_options(f.path);
  o.batch_size = 4;
  o.prefetch_batches = 2;
  auto l = Loader::open(o).value();
  BatchView b;
  EXPECT_FALSE(l->next(b));  // no epoch started
  ASSERT_TRUE(l->start_epoch(0).ok());
  ASSERT_TRUE(l->next(b));
  ASSERT_TRUE(l->start_epoch(1).ok());  // abandons epoch 0 while the producer waits
  EXPECT_EQ(drain(*l).size(), 100u);
}

TEST(Loader, BadOptionsAndFiles) {
  TempDir dir;
  LoaderOptions o;
  o.path = dir.file("missing.h5");
  auto s = Loader::open(o).status();
  EXPECT_NE(s.message().find("missing.h5: no such file"), std::string::npos) << s;
  Fixture f(10, 4, 4, 1);
  o = base_options(f.path);
  o.batch_size = 0;
  EXPECT_NE(Loader::open(o).status().message().find("batch_size is 0"), std::string::npos);
  o = base_options(f.path);
  o.rank = 2;
  o.world_size = 2;
  EXPECT_NE(Loader::open(o).status().message().find("rank is 2"), std::string::npos);
  o = base_options(f.path);
  o.augment.crop_padding = 50;
  EXPECT_NE(Loader::open(o).status().message().find("crop_padding is 50"), std::string::npos);
}

}  // namespace
}  // namespace resdist::data
