// Loader implementation: a producer thread reads chunk runs (or a whole in-memory copy),
// transforms samples into a ring of preallocated batch slots, and the trainer takes them in order.
#include "worker/data/loader.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/rng.h"

namespace resdist::data {
namespace {

constexpr uint64_t kAugmentStream = 0x61756720ULL;  // "aug "
constexpr size_t kHugePage = size_t{2} << 20;

// A large buffer allocated once, 2 MiB aligned and advised onto huge pages: first touch of a 4
// KiB page is very expensive on the target VMs (see PLATFORM.md). `prefault` touches it now.
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() { std::free(data_); }

  bool allocate(size_t bytes, bool prefault) {
    std::free(data_);
    size_ = std::max<size_t>(kHugePage, (bytes + kHugePage - 1) / kHugePage * kHugePage);
    data_ = static_cast<uint8_t*>(std::aligned_alloc(kHugePage, size_));
    if (data_ == nullptr) return false;
    madvise(data_, size_, MADV_HUGEPAGE);
    if (prefault) std::memset(data_, 0, size_);
    return true;
  }
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

struct Augmentation {
  int dx = 0, dy = 0;  // crop offset in the padded image, in [0, 2 * padding]
  bool flip = false;
};

Augmentation draw_augmentation(const AugmentOptions& a, uint64_t seed, int64_t epoch,
                               int64_t sample) {
  Augmentation out;
  if (a.crop_padding <= 0 && !a.horizontal_flip) return out;
  const uint64_t h = hash_keys(
      {seed, static_cast<uint64_t>(epoch), static_cast<uint64_t>(sample), kAugmentStream});
  if (a.crop_padding > 0) {
    const uint64_t span = 2 * static_cast<uint64_t>(a.crop_padding) + 1;
    out.dx = static_cast<int>((h & 0xffffff) % span);
    out.dy = static_cast<int>(((h >> 24) & 0xffffff) % span);
  }
  if (a.horizontal_flip) out.flip = (h >> 63) != 0;
  return out;
}

// Per-channel affine normalization: value = pixel * scale[c] + bias[c]
//   = (pixel / 255 - mean[c]) / std[c].
struct Normalizer {
  float scale[4] = {1, 1, 1, 1};
  float bias[4] = {0, 0, 0, 0};
  explicit Normalizer(const DatasetInfo& info) {
    for (int c = 0; c < info.channels && c < 4; ++c) {
      scale[c] = 1.0f / (255.0f * info.std[c]);
      bias[c] = -info.mean[c] / info.std[c];
    }
  }
};

// The core transform for one image. Rows outside the source are padding; within a row the
// valid source span is contiguous, so the inner loops are branch-free and vectorize.
void transform(const Normalizer& norm, int h, int w, int ch, int padding, const Augmentation& aug,
               BatchLayout layout, const uint8_t* src, float* dst) {
  const int off_x = aug.dx - padding;  // source x = cropped x + off_x
  const int off_y = aug.dy - padding;
  // Cropped x' in [lo, hi) has a source pixel; outside it is padding.
  const int lo = std::max(0, -off_x);
  const int hi = std::min(w, w - off_x);
  if (layout == BatchLayout::kNCHW) {
    for (int c = 0; c < ch; ++c) {
      const float s = norm.scale[c], b = norm.bias[c];
      float* plane = dst + static_cast<size_t>(c) * h * w;
      for (int y = 0; y < h; ++y) {
        float* out = plane + static_cast<size_t>(y) * w;
        const int sy = y + off_y;
        if (sy < 0 || sy >= h || lo >= hi) {
          std::fill(out, out + w, b);
          continue;
        }
        const uint8_t* row = src + (static_cast<size_t>(sy) * w + off_x) * ch + c;
        if (!aug.flip) {
          std::fill(out, out + lo, b);
          if (ch == 1) {
            for (int x = lo; x < hi; ++x) out[x] = static_cast<float>(row[x]) * s + b;
          } else {
            for (int x = lo; x < hi; ++x) out[x] = static_cast<float>(row[x * ch]) * s + b;
          }
          std::fill(out + hi, out + w, b);
        } else {
          // Output x = w - 1 - x'.
          std::fill(out, out + (w - hi), b);
          float* rev = out + (w - 1);
          if (ch == 1) {
            for (int x = lo; x < hi; ++x) rev[-x] = static_cast<float>(row[x]) * s + b;
          } else {
            for (int x = lo; x < hi; ++x) rev[-x] = static_cast<float>(row[x * ch]) * s + b;
          }
          std::fill(out + (w - lo), out + w, b);
        }
      }
    }
    return;
  }
  // NHWC
  for (int y = 0; y < h; ++y) {
    float* out = dst + static_cast<size_t>(y) * w * ch;
    const int sy = y + off_y;
    auto pad_pixel = [&](int x) {
      for (int c = 0; c < ch; ++c) out[static_cast<size_t>(x) * ch + c] = norm.bias[c];
    };
    if (sy < 0 || sy >= h || lo >= hi) {
      for (int x = 0; x < w; ++x) pad_pixel(x);
      continue;
    }
    const uint8_t* row = src + (static_cast<size_t>(sy) * w + off_x) * ch;
    for (int x = 0; x < lo; ++x) pad_pixel(aug.flip ? w - 1 - x : x);
    for (int x = hi; x < w; ++x) pad_pixel(aug.flip ? w - 1 - x : x);
    if (!aug.flip) {
      if (ch == 1) {
        const float s = norm.scale[0], b = norm.bias[0];
        for (int x = lo; x < hi; ++x) out[x] = static_cast<float>(row[x]) * s + b;
      } else {
        for (int x = lo; x < hi; ++x) {
          for (int c = 0; c < ch; ++c) {
            out[static_cast<size_t>(x) * ch + c] =
                static_cast<float>(row[static_cast<size_t>(x) * ch + c]) * norm.scale[c] +
                norm.bias[c];
          }
        }
      }
    } else {
      for (int x = lo; x < hi; ++x) {
        float* o = out + static_cast<size_t>(w - 1 - x) * ch;
        for (int c = 0; c < ch; ++c) {
          o[c] = static_cast<float>(row[static_cast<size_t>(x) * ch + c]) * norm.scale[c] +
                 norm.bias[c];
        }
      }
    }
  }
}

Status invalid_option(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("loader: ", what));
}

}  // namespace

void transform_image(const DatasetInfo& info, const AugmentOptions& augment, BatchLayout layout,
                     uint64_t seed, int64_t epoch, int64_t sample, const uint8_t* src, float* dst) {
  const Normalizer norm(info);
  transform(norm, info.height, info.width, info.channels, augment.crop_padding,
            draw_augmentation(augment, seed, epoch, sample), layout, src, dst);
}

// ---------------------------------------------------------------------------------------------

struct Loader::Impl {
  LoaderOptions options;
  std::unique_ptr<DatasetReader> reader;
  DatasetInfo info;
  Normalizer norm{DatasetInfo{}};
  int64_t image_bytes = 0;   // H * W * C
  int64_t image_floats = 0;  // H * W * C
  int64_t chunk_size = 1;    // plan chunk, in samples
  int64_t num_chunks = 0;
  bool in_memory = false;

  Arena all_images;  // in-memory mode: (N, H, W, C)
  Arena window;      // streaming mode: capacity_chunks * chunk_size images
  int64_t capacity_chunks = 0;
  std::vector<int64_t> chunk_offset;  // [num_chunks] byte offset in `window`, -1 if not loaded

  // Batch slots: ring of `num_slots`, each (batch_size, image_floats) floats + labels + indices.
  int num_slots = 0;
  Arena slot_images;
  std::vector<int32_t> slot_labels;   // (num_slots, batch_size)
  std::vector<int64_t> slot_indices;  // (num_slots, batch_size)
  std::vector<int> slot_size, slot_valid;

  // Epoch state, fixed while the producer runs.
  int64_t epoch = 0;
  RankShard shard;
  int64_t to_produce = 0;  // samples this rank emits this epoch
  int64_t batches = 0;

  // Queue. Batch b lives in slot b % num_slots.
  mutable std::mutex mu;
  std::condition_variable cv;
  int64_t produced = 0;  // GUARDED_BY(mu): batches published
  int64_t consumed = 0;  // GUARDED_BY(mu): batches handed to the consumer
  int64_t released = 0;  // GUARDED_BY(mu): batches whose slot the consumer gave back
  bool done = false;     // GUARDED_BY(mu): producer finished (all batches or error)
  bool cancel = false;   // GUARDED_BY(mu)
  Status error;          // GUARDED_BY(mu)
  std::thread producer;

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu);
      cancel = true;
    }
    cv.notify_all();
    if (producer.joinable()) producer.join();
  }

  // Waits for a free slot for batch `b`; false if cancelled.
  bool wait_for_slot(int64_t b) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return cancel || b - released < num_slots; });
    return !cancel;
  }

  bool cancelled() {
    std::lock_guard<std::mutex> lock(mu);
    return cancel;
  }

  // Reads the chunks needed by shard positions [begin, end) into `window`; returns the end of
  // the segment actually prepared (limited by the window capacity).
  StatusOr<int64_t> prepare_segment(int64_t begin, int64_t end, std::vector<int64_t>& chunks) {
    if (in_memory) return end;
    for (int64_t c : chunks) chunk_offset[c] = -1;
    chunks.clear();
    int64_t pos = begin;
    for (; pos < end; ++pos) {
      const int64_t c = shard.indices[pos] / chunk_size;
      if (chunk_offset[c] == -2) continue;  // already in this segment
      if (static_cast<int64_t>(chunks.size()) == capacity_chunks) break;
      chunk_offset[c] = -2;
      chunks.push_back(c);
    }
    std::sort(chunks.begin(), chunks.end());
    // Contiguous runs of chunk ids are read with one hyperslab each.
    int64_t buffer_chunk = 0;
    for (size_t i = 0; i < chunks.size();) {
      size_t j = i + 1;
      while (j < chunks.size() && chunks[j] == chunks[j - 1] + 1) ++j;
      const int64_t first = chunks[i] * chunk_size;
      const int64_t last = std::min(info.num_samples, (chunks[j - 1] + 1) * chunk_size);
      uint8_t* dst = window.data() + buffer_chunk * chunk_size * image_bytes;
      RETURN_IF_ERROR(reader->read_images(first, last - first, dst));
      for (size_t k = i; k < j; ++k) {
        chunk_offset[chunks[k]] =
            (buffer_chunk + static_cast<int64_t>(k - i)) * chunk_size * image_bytes;
      }
      buffer_chunk += static_cast<int64_t>(j - i);
      i = j;
    }
    return pos;
  }

  const uint8_t* sample_data(int64_t index) const {
    if (in_memory) return all_images.data() + index * image_bytes;
    return window.data() + chunk_offset[index / chunk_size] + (index % chunk_size) * image_bytes;
  }

  void produce() {
    h5::quiet_errors();
    std::vector<int64_t> chunks;
    chunks.reserve(static_cast<size_t>(std::max<int64_t>(capacity_chunks, 1)));
    const int batch_size = options.batch_size;
    int64_t batch = 0;
    int in_batch = 0;
    float* images = nullptr;
    int32_t* labels = nullptr;
    int64_t* indices = nullptr;
    int valid = 0;
    Status status;
    for (int64_t pos = 0; pos < to_produce && status.ok();) {
      auto seg_end = prepare_segment(pos, to_produce, chunks);
      if (!seg_end.ok()) {
        status = seg_end.status();
        break;
      }
      for (; pos < *seg_end; ++pos) {
        if (in_batch == 0) {
          if (!wait_for_slot(batch)) return;
          const int slot = static_cast<int>(batch % num_slots);
          images = reinterpret_cast<float*>(slot_images.data()) +
                   static_cast<size_t>(slot) * batch_size * image_floats;
          labels = slot_labels.data() + static_cast<size_t>(slot) * batch_size;
          indices = slot_indices.data() + static_cast<size_t>(slot) * batch_size;
          valid = 0;
        }
        const int64_t index = shard.indices[pos];
        transform(norm, info.height, info.width, info.channels, options.augment.crop_padding,
                  draw_augmentation(options.augment, options.seed, epoch, index), options.layout,
                  sample_data(index), images + in_batch * image_floats);
        labels[in_batch] = reader->labels()[index];
        indices[in_batch] = index;
        if (pos < shard.num_valid) ++valid;
        ++in_batch;
        if (in_batch == batch_size || pos + 1 == to_produce) {
          const int slot = static_cast<int>(batch % num_slots);
          {
            std::lock_guard<std::mutex> lock(mu);
            if (cancel) return;
            slot_size[slot] = in_batch;
            slot_valid[slot] = valid;
            produced = ++batch;
          }
          cv.notify_all();
          in_batch = 0;
        }
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!status.ok() && error.ok()) error = status;
      done = true;
    }
    cv.notify_all();
  }
};

Loader::Loader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Loader::~Loader() {
  if (impl_) impl_->stop();
}

StatusOr<std::unique_ptr<Loader>> Loader::open(const LoaderOptions& o) {
  if (o.world_size < 1) {
    return invalid_option(absl::StrFormat("world_size is %d, expected >= 1", o.world_size));
  }
  if (o.rank < 0 || o.rank >= o.world_size) {
    return invalid_option(
        absl::StrFormat("rank is %d, expected 0 <= rank < world_size (%d)", o.rank, o.world_size));
  }
  if (o.batch_size < 1) {
    return invalid_option(absl::StrFormat("batch_size is %d, expected >= 1", o.batch_size));
  }
  if (o.prefetch_batches < 1) {
    return invalid_option(
        absl::StrFormat("prefetch_batches is %d, expected >= 1", o.prefetch_batches));
  }
  if (o.window_chunks < 1) {
    return invalid_option(absl::StrFormat("window_chunks is %d, expected >= 1", o.window_chunks));
  }
  if (o.chunk_size < 0) {
    return invalid_option(absl::StrFormat("chunk_size is %d, expected >= 0", o.chunk_size));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = o;
  ASSIGN_OR_RETURN(impl->reader, DatasetReader::open(o.path));
  impl->info = impl->reader->info();
  const DatasetInfo& info = impl->info;
  if (o.augment.crop_padding < 0 || o.augment.crop_padding > std::max(info.height, info.width)) {
    return invalid_option(
        absl::StrFormat("augment.crop_padding is %d, expected 0..%d (the image side) for %s",
                        o.augment.crop_padding, std::max(info.height, info.width), o.path));
  }
  if (!o.normalize_mean.empty() || !o.normalize_std.empty()) {
    if (static_cast<int>(o.normalize_mean.size()) != info.channels ||
        static_cast<int>(o.normalize_std.size()) != info.channels)
      return invalid_option(absl::StrFormat(
          "normalize_mean/normalize_std have %d/%d values, expected %d (the channels of %s)",
          o.normalize_mean.size(), o.normalize_std.size(), info.channels, o.path));
    for (float v : o.normalize_std)
      if (!(v > 0.f) || !std::isfinite(v))
        return invalid_option(absl::StrFormat("normalize_std value %g is not allowed, expected > 0", v));
    DatasetInfo with_stats = info;
    with_stats.mean = o.normalize_mean;
    with_stats.std = o.normalize_std;
    impl->norm = Normalizer(with_stats);
  } else {
    impl->norm = Normalizer(info);
  }
  impl->image_bytes = info.image_bytes();
  impl->image_floats = info.image_bytes();
  impl->chunk_size =
      o.chunk_size > 0 ? o.chunk_size
      : info.chunk_samples > 0
          ? info.chunk_samples
          : chunk_samples_for(info.image_bytes(), info.num_samples, kDefaultChunkBytes);
  impl->chunk_size = std::min(impl->chunk_size, info.num_samples);
  impl->num_chunks = (info.num_samples + impl->chunk_size - 1) / impl->chunk_size;

  const int64_t total_bytes = info.num_samples * impl->image_bytes;
  impl->in_memory =
      o.in_memory == InMemoryMode::kAlways ||
      (o.in_memory == InMemoryMode::kAuto && total_bytes <= o.in_memory_threshold_bytes);
  if (impl->in_memory) {
    if (!impl->all_images.allocate(static_cast<size_t>(total_bytes), /*prefault=*/false)) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "loader: cannot allocate %d bytes to hold %s in memory", total_bytes, o.path));
    }
    RETURN_IF_ERROR(impl->reader->read_images(0, info.num_samples, impl->all_images.data()));
  } else {
    impl->capacity_chunks = std::min(impl->num_chunks, 2 * o.window_chunks);
    const size_t bytes =
        static_cast<size_t>(impl->capacity_chunks * impl->chunk_size * impl->image_bytes);
    if (!impl->window.allocate(bytes, /*prefault=*/true)) {
      return absl::ResourceExhaustedError(
          absl::StrFormat("loader: cannot allocate a %d-byte read window", bytes));
    }
    impl->chunk_offset.assign(static_cast<size_t>(impl->num_chunks), -1);
  }
  impl->num_slots = o.prefetch_batches + 1;  // + the one the consumer holds
  const size_t slot_floats = static_cast<size_t>(o.batch_size) * impl->image_floats;
  if (!impl->slot_images.allocate(slot_floats * impl->num_slots * sizeof(float), true)) {
    return absl::ResourceExhaustedError("loader: cannot allocate batch slots");
  }
  impl->slot_labels.assign(static_cast<size_t>(impl->num_slots) * o.batch_size, 0);
  impl->slot_indices.assign(static_cast<size_t>(impl->num_slots) * o.batch_size, 0);
  impl->slot_size.assign(impl->num_slots, 0);
  impl->slot_valid.assign(impl->num_slots, 0);
  {
    std::lock_guard<std::mutex> lock(impl->mu);
    impl->done = true;  // no epoch started yet: next() returns false
  }
  return std::unique_ptr<Loader>(new Loader(std::move(impl)));
}

const DatasetInfo& Loader::info() const { return impl_->info; }
const LoaderOptions& Loader::options() const { return impl_->options; }
bool Loader::in_memory() const { return impl_->in_memory; }
int64_t Loader::image_floats() const { return impl_->image_floats; }
int64_t Loader::samples_in_epoch() const { return impl_->to_produce; }
int64_t Loader::batches_in_epoch() const { return impl_->batches; }

Status Loader::start_epoch(int64_t epoch, int64_t samples_consumed) {
  Impl& m = *impl_;
  m.stop();
  ShardPlanOptions plan;
  plan.num_samples = m.info.num_samples;
  plan.world_size = m.options.world_size;
  plan.seed = m.options.seed;
  plan.epoch = epoch;
  plan.remainder = m.options.remainder;
  plan.shuffle = m.options.shuffle;
  plan.chunk_size = m.chunk_size;
  plan.window_chunks = m.options.window_chunks;
  plan.samples_consumed = samples_consumed;
  ASSIGN_OR_RETURN(m.shard, plan_rank_shard(plan, m.options.rank));
  m.epoch = epoch;
  const int64_t n = static_cast<int64_t>(m.shard.indices.size());
  const int64_t b = m.options.batch_size;
  m.to_produce = m.options.drop_last_batch ? n / b * b : n;
  m.batches = (m.to_produce + b - 1) / b;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.produced = m.consumed = m.released = 0;
    m.done = false;
    m.cancel = false;
    m.error = absl::OkStatus();
  }
  m.producer = std::thread([&m] { m.produce(); });
  return absl::OkStatus();
}

bool Loader::next(BatchView& batch) {
  Impl& m = *impl_;
  std::unique_lock<std::mutex> lock(m.mu);
  if (m.released < m.consumed) {
    m.released = m.consumed;
    m.cv.notify_all();
  }
  m.cv.wait(lock, [&] { return m.consumed < m.produced || m.done || !m.error.ok(); });
  if (!m.error.ok() || m.consumed >= m.produced) return false;
  const int64_t b = m.consumed++;
  const int slot = static_cast<int>(b % m.num_slots);
  const size_t base = static_cast<size_t>(slot) * m.options.batch_size;
  batch.images = reinterpret_cast<const float*>(m.slot_images.data()) + base * m.image_floats;
  batch.labels = m.slot_labels.data() + base;
  batch.indices = m.slot_indices.data() + base;
  batch.size = m.slot_size[slot];
  batch.valid = m.slot_valid[slot];
  batch.step = b;
  return true;
}

bool Loader::next_into(float* images, int32_t* labels, BatchView* batch) {
  BatchView view;
  if (!next(view)) return false;
  std::memcpy(images, view.images, static_cast<size_t>(view.size) * image_floats() * 4);
  std::memcpy(labels, view.labels, static_cast<size_t>(view.size) * sizeof(int32_t));
  if (batch != nullptr) {
    *batch = view;
    batch->images = images;
    batch->labels = labels;
  }
  return true;
}

Status Loader::status() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->error;
}

}  // namespace resdist::data
