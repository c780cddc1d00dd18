// Times full training steps (forward, loss, backward, SGD update) of a resdist model on random
// data. The side-by-side comparison with PyTorch is bench/cpu_vs_pytorch.sh.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "CLI/CLI.hpp"
#include "worker/nn/model.h"
#include "worker/optim/sgd.h"
#include "worker/train/batch_source.h"

int main(int argc, char** argv) {
  CLI::App app{"resdist training-step benchmark"};
  resdist::ModelSpec spec;
  int64_t batch = 128;
  int threads = 1, steps = 20, warmup = 3;
  app.add_option("--arch", spec.arch, "model architecture");
  app.add_option("--batch", batch, "batch size");
  app.add_option("--threads", threads, "compute threads");
  app.add_option("--channels", spec.in_channels, "input channels");
  app.add_option("--height", spec.height, "input height");
  app.add_option("--width", spec.width, "input width");
  app.add_option("--classes", spec.num_classes, "classes");
  app.add_option("--steps", steps, "timed steps");
  app.add_option("--warmup", warmup, "untimed steps first");
  app.add_flag("--small-input-stem", spec.small_input_stem, "ImageNet ResNets: 3x3 stem");
  std::string data_path, in_memory = "off";
  int crop_padding = 0;
  app.add_option("--data", data_path,
                 "also time steps fed by the HDF5 loader from this file, alternating with the "
                 "static batch (shape and classes come from the file)");
  app.add_option("--in-memory", in_memory, "loader mode with --data: on|off");
  app.add_option("--crop-padding", crop_padding, "loader augmentation with --data");
  CLI11_PARSE(app, argc, argv);

  std::unique_ptr<resdist::BatchSource> source;
  if (!data_path.empty()) {
    resdist::data::LoaderOptions lo;
    lo.path = data_path;
    lo.batch_size = static_cast<int>(batch);
    lo.drop_last_batch = true;
    lo.augment.crop_padding = crop_padding;
    lo.in_memory = in_memory == "on" ? resdist::data::InMemoryMode::kAlways
                                     : resdist::data::InMemoryMode::kNever;
    auto opened = resdist::OpenLoaderSource(lo);
    if (!opened.ok()) {
      std::fprintf(stderr, "resdist_train_bench: %s\n", std::string(opened.status().message()).c_str());
      return 2;
    }
    source = std::move(*opened);
    spec.in_channels = source->channels();
    spec.height = source->height();
    spec.width = source->width();
    spec.num_classes = source->num_classes();
    if (!source->start_epoch(0, 0).ok()) return 2;
  }

  auto backend = resdist::MakeCpuBackend(threads);
  auto built = resdist::Model::Build(spec, backend.get(), 1);
  if (!built.ok()) {
    std::fprintf(stderr, "resdist_train_bench: %s\n", std::string(built.status().message()).c_str());
    return 2;
  }
  auto& model = *built;
  resdist::SgdOptions o;
  o.lr = 0.01;
  o.momentum = 0.9;
  o.weight_decay = 5e-4;
  resdist::Sgd sgd(model->parameters(), o);
  auto loss_op = backend->softmax_cross_entropy();

  resdist::Tensor x(resdist::Dims{batch, spec.in_channels, spec.height, spec.width});
  std::vector<int32_t> labels(batch);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = nd(rng);
  for (auto& l : labels) l = static_cast<int32_t>(rng() % spec.num_classes);
  resdist::Tensor dlogits;

  // With --data, even steps take the static batch and odd steps the loader's next batch
  // (copied into the same input tensor, as the trainer does), so both see the same machine.
  std::vector<double> times, loader_times;
  int64_t epoch = 0;
  const int total = source ? 2 * (warmup + steps) : warmup + steps;
  for (int s = 0; s < total; ++s) {
    const bool from_loader = source && s % 2 == 1;
    const int step_index = source ? s / 2 : s;
    const auto t0 = std::chrono::steady_clock::now();
    if (from_loader) {
      int size = 0, valid = 0;
      while (!source->next(x.data(), labels.data(), &size, &valid)) {
        if (!source->status().ok() || !source->start_epoch(++epoch, 0).ok()) {
          std::fprintf(stderr, "resdist_train_bench: loader failed\n");
          return 1;
        }
      }
    }
    const resdist::Tensor& logits = model->forward(x, true);
    loss_op->forward_backward(logits, labels, batch, 0.f, &dlogits);
    model->backward(dlogits);
    sgd.step(o.lr);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (step_index >= warmup) (from_loader ? loader_times : times).push_back(dt);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  std::printf("arch=%s batch=%lld threads=%d step_ms_median=%.2f step_ms_min=%.2f\n",
              spec.arch.c_str(), static_cast<long long>(batch), threads, median * 1e3,
              times.front() * 1e3);
  if (source) {
    std::sort(loader_times.begin(), loader_times.end());
    const double lm = loader_times[loader_times.size() / 2];
    std::printf("static_batch_step_ms=%.2f loader_step_ms=%.2f loader_overhead=%.2f%% (%s)\n",
                median * 1e3, lm * 1e3, 100.0 * (lm / median - 1.0), source->describe().c_str());
  }
  std::printf("images_per_s=%.1f\n", batch / median);
  return 0;
}
