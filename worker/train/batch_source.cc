// BatchSource implementations: the HDF5 loader adapter and the in-memory synthetic source.
#include "worker/train/batch_source.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"

namespace resdist {
namespace {

class LoaderSource final : public BatchSource {
 public:
  explicit LoaderSource(std::unique_ptr<data::Loader> loader) : loader_(std::move(loader)) {}
  int64_t channels() const override { return loader_->info().channels; }
  int64_t height() const override { return loader_->info().height; }
  int64_t width() const override { return loader_->info().width; }
  int64_t num_classes() const override { return loader_->info().num_classes(); }
  std::string describe() const override {
    const auto& i = loader_->info();
    return absl::StrCat(i.path, " (", i.num_samples, " images ", i.height, "x", i.width, "x",
                        i.channels, ", ", i.num_classes(), " classes",
                        loader_->in_memory() ? ", in memory" : ", streamed", ")");
  }
  Status start_epoch(int64_t epoch, int64_t consumed) override {
    return loader_->start_epoch(epoch, consumed);
  }
  int64_t batches_in_epoch() const override { return loader_->batches_in_epoch(); }
  bool next(float* images, int32_t* labels, int* size, int* valid) override {
    data::BatchView view;
    if (!loader_->next_into(images, labels, &view)) return false;
    *size = view.size;
    *valid = view.valid;
    return true;
  }
  Status status() const override { return loader_->status(); }
  bool normalization(std::vector<float>* mean, std::vector<float>* std) const override {
    const data::LoaderOptions& o = loader_->options();
    *mean = o.normalize_mean.empty() ? loader_->info().mean : o.normalize_mean;
    *std = o.normalize_std.empty() ? loader_->info().std : o.normalize_std;
    return true;
  }

 private:
  std::unique_ptr<data::Loader> loader_;
};

class SyntheticSource final : public BatchSource {
 public:
  SyntheticSource(const SyntheticSourceOptions& o, std::vector<float> images,
                  std::vector<int32_t> labels)
      : o_(o), images_(std::move(images)), labels_(std::move(labels)) {
    order_.resize(labels_.size());
  }
  int64_t channels() const override { return o_.data.channels; }
  int64_t height() const override { return o_.data.height; }
  int64_t width() const override { return o_.data.width; }
  int64_t num_classes() const override { return o_.data.num_classes; }
  std::string describe() const override {
    return absl::StrCat("synthetic (", labels_.size(), " images ", o_.data.height, "x",
                        o_.data.width, "x", o_.data.channels, ", ", o_.data.num_classes,
                        " classes, seed ", o_.data.seed, ")");
  }
  Status start_epoch(int64_t epoch, int64_t consumed) override {
    if (o_.use_shard_plan) {
      ShardPlanOptions p;
      p.num_samples = static_cast<int64_t>(labels_.size());
      p.world_size = o_.world_size;
      p.seed = o_.shuffle_seed;
      p.epoch = epoch;
      p.remainder = o_.drop_last_batch ? RemainderPolicy::kDrop : RemainderPolicy::kPad;
      p.shuffle = o_.shuffle;
      p.samples_consumed = consumed;
      ASSIGN_OR_RETURN(RankShard shard, plan_rank_shard(p, o_.rank));
      order_ = std::move(shard.indices);
      num_valid_ = shard.num_valid;
      pos_ = 0;
      return absl::OkStatus();
    }
    std::iota(order_.begin(), order_.end(), int64_t{0});
    if (o_.shuffle) std::shuffle(order_.begin(), order_.end(), std::mt19937_64(o_.shuffle_seed * 1000003 + epoch));
    if (consumed < 0 || consumed > static_cast<int64_t>(order_.size()))
      return absl::InvalidArgumentError(absl::StrCat("samples_consumed ", consumed,
                                                     " is outside [0, ", order_.size(), "]"));
    pos_ = consumed;
    num_valid_ = static_cast<int64_t>(order_.size());
    return absl::OkStatus();
  }
  int64_t batches_in_epoch() const override {
    const int64_t n = static_cast<int64_t>(order_.size());
    return o_.drop_last_batch ? n / o_.batch_size : (n + o_.batch_size - 1) / o_.batch_size;
  }
  bool next(float* images, int32_t* labels, int* size, int* valid) override {
    const int64_t n = static_cast<int64_t>(order_.size());
    int64_t count = std::min<int64_t>(o_.batch_size, n - pos_);
    if (count <= 0 || (o_.drop_last_batch && count < o_.batch_size)) return false;
    const int64_t per = o_.data.channels * o_.data.height * o_.data.width;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t s = order_[pos_ + i];
      std::memcpy(images + i * per, images_.data() + s * per, per * sizeof(float));
      labels[i] = labels_[s];
    }
    *size = static_cast<int>(count);
    *valid = static_cast<int>(std::clamp<int64_t>(num_valid_ - pos_, 0, count));
    pos_ += count;
    return true;
  }
  Status status() const override { return absl::OkStatus(); }

 private:
  SyntheticSourceOptions o_;
  std::vector<float> images_;  // (N, C, H, W), normalized
  std::vector<int32_t> labels_;
  std::vector<int64_t> order_;  // this epoch's sample indices (this rank's shard)
  int64_t num_valid_ = 0;       // order_[0, num_valid_) are real, the rest pad duplicates
  int64_t pos_ = 0;
};

}  // namespace

StatusOr<std::unique_ptr<BatchSource>> OpenLoaderSource(const data::LoaderOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<data::Loader> loader, data::Loader::open(options));
  return std::unique_ptr<BatchSource>(new LoaderSource(std::move(loader)));
}

StatusOr<std::unique_ptr<BatchSource>> MakeSyntheticSource(const SyntheticSourceOptions& o) {
  if (o.use_shard_plan && (o.world_size < 1 || o.rank < 0 || o.rank >= o.world_size))
    return absl::InvalidArgumentError(absl::StrCat("synthetic source: rank ", o.rank,
                                                   " is outside world size ", o.world_size));
  if (o.batch_size < 1)
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size: ", o.batch_size, " is not allowed; expected >= 1"));
  ASSIGN_OR_RETURN(SyntheticGenerator gen, SyntheticGenerator::create(o.data));
  SyntheticData raw;
  raw.images.resize(o.data.num_samples * gen.image_bytes());
  raw.labels.resize(o.data.num_samples);
  gen.fill(o.first_sample, o.data.num_samples, raw.images.data(), raw.labels.data());
  const int64_t n = o.data.num_samples, c = o.data.channels,
                hw = int64_t{o.data.height} * o.data.width;
  // Per-channel mean/std of pixel/255, then (x - mean) / std, NHWC uint8 -> NCHW float.
  std::vector<double> sum(c, 0), sq(c, 0);
  for (int64_t i = 0; i < n * hw; ++i)
    for (int64_t ch = 0; ch < c; ++ch) {
      const double v = raw.images[i * c + ch] / 255.0;
      sum[ch] += v;
      sq[ch] += v * v;
    }
  std::vector<float> mean(c), inv_std(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    const double m = sum[ch] / (n * hw);
    mean[ch] = static_cast<float>(m);
    inv_std[ch] = static_cast<float>(1.0 / std::sqrt(std::max(1e-12, sq[ch] / (n * hw) - m * m)));
  }
  std::vector<float> images(n * c * hw);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t p = 0; p < hw; ++p)
      for (int64_t ch = 0; ch < c; ++ch)
        images[(i * c + ch) * hw + p] =
            (raw.images[(i * hw + p) * c + ch] / 255.f - mean[ch]) * inv_std[ch];
  return std::unique_ptr<BatchSource>(
      new SyntheticSource(o, std::move(images), std::move(raw.labels)));
}

}  // namespace resdist
