// Loader throughput: images/s that one resdist_data producer thread delivers (crop + flip +
// normalize into NCHW float32) for 28x28x1 and 32x32x3, streaming from HDF5 and in memory.
// Not a training benchmark: the consumer only takes batches. Results go to bench/RESULTS.md.
//
// usage: resdist_loader_bench [--dir DIR] [--repeats R] [--epochs E]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dataset.h"
#include "common/synthetic.h"
#include "worker/data/loader.h"

namespace {

using resdist::data::BatchLayout;
using resdist::data::BatchView;
using resdist::data::InMemoryMode;
using resdist::data::Loader;
using resdist::data::LoaderOptions;

struct Case {
  const char* name;
  int64_t n;
  int h, w, c, padding;
};

bool make_file(const std::string& path, const Case& k) {
  if (std::filesystem::exists(path)) return true;
  resdist::SyntheticSpec spec{k.n, k.h, k.w, k.c, 10, 1};
  auto data = resdist::make_synthetic(spec);
  if (!data.ok()) return false;
  resdist::DatasetWriteOptions o;
  o.num_samples = k.n;
  o.height = k.h;
  o.width = k.w;
  o.channels = k.c;
  for (int i = 0; i < 10; ++i) o.class_names.push_back(absl::StrCat("c", i));
  o.source = "loader_bench";
  auto s = resdist::write_dataset(path, o, data->images.data(), data->labels.data());
  if (!s.ok()) std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
  return s.ok();
}

// Images per second over `epochs` epochs after one warm-up epoch.
double measure(const std::string& path, const Case& k, InMemoryMode mode, BatchLayout layout,
               int epochs) {
  LoaderOptions o;
  o.path = path;
  o.batch_size = 128;
  o.seed = 1;
  o.layout = layout;
  o.augment.crop_padding = k.padding;
  o.augment.horizontal_flip = true;
  o.in_memory = mode;
  auto loader = Loader::open(o);
  if (!loader.ok()) {
    std::fprintf(stderr, "%s\n", std::string(loader.status().message()).c_str());
    std::exit(1);
  }
  volatile float sink = 0;
  BatchView b;
  auto run_epoch = [&](int64_t epoch) {
    int64_t images = 0;
    (void)(*loader)->start_epoch(epoch);
    while ((*loader)->next(b)) {
      sink = sink + b.images[0];
      images += b.size;
    }
    return images;
  };
  run_epoch(0);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t images = 0;
  for (int e = 1; e <= epochs; ++e) images += run_epoch(e);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(images) / secs;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "/tmp/resdist_loader_bench";
  int repeats = 3, epochs = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
    if (!std::strcmp(argv[i], "--repeats")) repeats = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--epochs")) epochs = std::atoi(argv[i + 1]);
  }
  std::filesystem::create_directories(dir);
  const Case cases[] = {{"28x28x1", 60000, 28, 28, 1, 2}, {"32x32x3", 50000, 32, 32, 3, 4}};
  std::printf("| shape | images | mode | layout | images/s (median of %d) | min | max |\n",
              repeats);
  std::printf("|---|---|---|---|---|---|---|\n");
  for (const Case& k : cases) {
    const std::string path = dir + "/" + k.name + ".h5";
    if (!make_file(path, k)) return 1;
    for (InMemoryMode mode : {InMemoryMode::kNever, InMemoryMode::kAlways}) {
      for (BatchLayout layout : {BatchLayout::kNCHW, BatchLayout::kNHWC}) {
        std::vector<double> r;
        for (int i = 0; i < repeats; ++i) r.push_back(measure(path, k, mode, layout, epochs));
        std::sort(r.begin(), r.end());
        std::printf(
            "| %s | %lld | %s | %s | %.0f | %.0f | %.0f |\n", k.name, static_cast<long long>(k.n),
            mode == InMemoryMode::kNever ? "streaming (HDF5 chunk runs)" : "in memory",
            layout == BatchLayout::kNCHW ? "NCHW" : "NHWC", r[r.size() / 2], r.front(), r.back());
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
