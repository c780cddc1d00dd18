// Test helper for the PyTorch interop check (tests/interop/load_checkpoint.py): builds a resdist
// model with non-trivial parameters and batch-norm statistics, saves it through the
// Checkpointer, and writes what resdist computes for the Python side to reproduce:
//   OUT/ckpt-e0001-s000000010.h5  the checkpoint
//   OUT/logits.h5                 /input (N,C,H,W) float32, /logits (N,K) float32 (eval mode)
//   OUT/data.h5                   a small dataset (docs/dataset-format.md) whose labels agree
//                                 with resdist's predictions on about 70% of the samples
//   OUT/eval.txt                  "accuracy <value> samples <n>": resdist's evaluation of data.h5
// Not a general export tool.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/checkpoint.h"
#include "common/dataset.h"
#include "common/hdf5.h"
#include "common/log.h"
#include "common/rng.h"
#include "worker/backend/ops.h"
#include "worker/nn/model.h"
#include "worker/optim/sgd.h"
#include "worker/train/checkpointer.h"

namespace resdist {
namespace {

int Fail(const Status& s) {
  std::fprintf(stderr, "dump_checkpoint: %s\n", std::string(s.message()).c_str());
  return 1;
}

// Evaluation-mode logits of `model` for normalized images `x` (N, C, H, W).
std::vector<float> Logits(Model* model, const std::vector<float>& x, int64_t n, int64_t c,
                          int64_t h, int64_t w) {
  Tensor input(Dims{n, c, h, w});
  std::memcpy(input.data(), x.data(), x.size() * sizeof(float));
  const Tensor& y = model->forward(input, /*training=*/false);
  return std::vector<float>(y.data(), y.data() + y.numel());
}

int Run(int argc, char** argv) {
  std::string out, arch = "resnet20";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--out") == 0) out = argv[i + 1];
    if (std::strcmp(argv[i], "--arch") == 0) arch = argv[i + 1];
  }
  if (out.empty()) {
    std::fprintf(stderr, "usage: dump_checkpoint --out DIR [--arch resnet20]\n");
    return 2;
  }
  std::unique_ptr<Backend> backend = MakeCpuBackend(2);
  ModelSpec spec;
  spec.arch = arch;
  spec.num_classes = 10;
  spec.small_input_stem = true;  // ImageNet ResNets on 32x32 inputs
  StatusOr<std::unique_ptr<Model>> built = Model::Build(spec, backend.get(), 123);
  if (!built.ok()) return Fail(built.status());
  Model* model = built->get();
  Sgd sgd(model->parameters(), SgdOptions{});

  // Batch-norm affine parameters and running statistics away from their defaults, so that the
  // evaluation-mode forward depends on every buffer; a momentum state to save.
  Rng rng(7);
  auto uniform = [&rng] {
    return static_cast<float>(rng.next() >> 40) / static_cast<float>(1 << 24);
  };
  for (Parameter* p : model->parameters()) {
    if (p->value.ndims() != 1) continue;
    const bool scale = p->name.find("bn") != std::string::npos && p->name.ends_with(".weight");
    for (int64_t i = 0; i < p->value.numel(); ++i) {
      p->value.data()[i] = scale ? 0.5f + uniform() : 0.2f * (uniform() - 0.5f);
    }
  }
  for (Buffer* b : model->buffers()) {
    for (int64_t i = 0; i < b->value.numel(); ++i) {
      float& v = b->value.data()[i];
      if (b->name.ends_with("running_mean")) v = 0.2f * (uniform() - 0.5f);
      if (b->name.ends_with("running_var")) v = 0.5f + uniform();
      if (b->name.ends_with("num_batches_tracked")) v = 390.f;
    }
  }
  for (Tensor& m : sgd.momentum_buffers()) {
    for (int64_t i = 0; i < m.numel(); ++i) m.data()[i] = uniform() - 0.5f;
  }
  sgd.set_has_momentum_state(true);

  CheckpointerOptions options;
  options.dir = out;
  StatusOr<std::unique_ptr<Checkpointer>> ck =
      Checkpointer::Create(options, model, &sgd, Logger("dump_checkpoint"));
  if (!ck.ok()) return Fail(ck.status());
  CheckpointMeta meta;
  meta.epoch = 1;
  meta.global_step = 10;
  meta.samples_consumed = 1280;
  meta.seed = 123;
  meta.job_spec = "model: {arch: " + arch + "}\n";
  if (Status s = (*ck)->save(meta); !s.ok()) return Fail(s);

  // Logits for a fixed random input.
  const int64_t n = 8, c = 3, h = 32, w = 32;
  std::vector<float> x(static_cast<size_t>(n * c * h * w));
  for (float& v : x) v = 2.f * uniform() - 1.f;
  const std::vector<float> logits = Logits(model, x, n, c, h, w);
  {
    StatusOr<h5::File> f = h5::File::create(out + "/logits.h5");
    if (!f.ok()) return Fail(f.status());
    StatusOr<h5::Dataset> in = f->create_dataset(
        "/input", H5T_IEEE_F32LE, {hsize_t(n), hsize_t(c), hsize_t(h), hsize_t(w)}, {}, 0);
    if (!in.ok()) return Fail(in.status());
    if (Status s = in->write_rows(H5T_NATIVE_FLOAT, 0, n, x.data()); !s.ok()) return Fail(s);
    StatusOr<h5::Dataset> lg = f->create_dataset("/logits", H5T_IEEE_F32LE,
                                                 {hsize_t(n), hsize_t(spec.num_classes)}, {}, 0);
    if (!lg.ok()) return Fail(lg.status());
    if (Status s = lg->write_rows(H5T_NATIVE_FLOAT, 0, n, logits.data()); !s.ok()) return Fail(s);
    if (Status s = f->close(); !s.ok()) return Fail(s);
  }

  // A small dataset and resdist's evaluation of it.
  const int64_t ns = 64;
  std::vector<uint8_t> images(static_cast<size_t>(ns * h * w * c));
  for (uint8_t& p : images) p = static_cast<uint8_t>(rng.below(256));
  std::vector<int32_t> labels(static_cast<size_t>(ns), 0);
  DatasetWriteOptions dw;
  dw.num_samples = ns;
  dw.height = static_cast<int>(h);
  dw.width = static_cast<int>(w);
  dw.channels = static_cast<int>(c);
  for (int k = 0; k < spec.num_classes; ++k) dw.class_names.push_back("class" + std::to_string(k));
  dw.source = "tests/interop/dump_checkpoint";
  const std::string data_path = out + "/data.h5";
  if (Status s = write_dataset(data_path, dw, images.data(), labels.data()); !s.ok())
    return Fail(s);
  std::vector<double> mean, stdev;
  {
    StatusOr<h5::File> f = h5::File::open(data_path);
    if (!f.ok()) return Fail(f.status());
    StatusOr<std::vector<double>> m = f->read_numbers_attribute("/", "mean");
    StatusOr<std::vector<double>> sd = f->read_numbers_attribute("/", "std");
    if (!m.ok()) return Fail(m.status());
    if (!sd.ok()) return Fail(sd.status());
    mean = *m;
    stdev = *sd;
  }
  // (pixel / 255 - mean[c]) / std[c], NHWC uint8 -> NCHW float (the loader's normalization).
  std::vector<float> xs(static_cast<size_t>(ns * c * h * w));
  for (int64_t i = 0; i < ns; ++i) {
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int64_t y = 0; y < h; ++y) {
        for (int64_t xx = 0; xx < w; ++xx) {
          const float p = images[((i * h + y) * w + xx) * c + ch];
          xs[((i * c + ch) * h + y) * w + xx] =
              (p / 255.f - static_cast<float>(mean[ch])) / static_cast<float>(stdev[ch]);
        }
      }
    }
  }
  std::vector<int32_t> predicted(static_cast<size_t>(ns));
  for (int64_t b = 0; b < ns; b += n) {
    std::vector<float> chunk(xs.begin() + b * c * h * w, xs.begin() + (b + n) * c * h * w);
    const std::vector<float> lg = Logits(model, chunk, n, c, h, w);
    for (int64_t i = 0; i < n; ++i) {
      int32_t best = 0;
      for (int32_t k = 1; k < spec.num_classes; ++k) {
        if (lg[i * spec.num_classes + k] > lg[i * spec.num_classes + best]) best = k;
      }
      predicted[b + i] = best;
    }
  }
  int64_t correct = 0;
  for (int64_t i = 0; i < ns; ++i) {
    labels[i] = rng.below(10) < 7 ? predicted[i] : static_cast<int32_t>(rng.below(10));
    correct += labels[i] == predicted[i];
  }
  if (Status s = write_dataset(data_path, dw, images.data(), labels.data()); !s.ok())
    return Fail(s);
  std::ofstream(out + "/eval.txt")
      << "accuracy " << static_cast<double>(correct) / ns << " samples " << ns << "\n";
  std::printf("dump_checkpoint: %s checkpoint, logits and dataset in %s (accuracy %.6f)\n",
              arch.c_str(), out.c_str(), static_cast<double>(correct) / ns);
  return 0;
}

}  // namespace
}  // namespace resdist

int main(int argc, char** argv) { return resdist::Run(argc, argv); }
