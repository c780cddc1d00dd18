// The training/evaluation data loader: reads one rank's shard of a resdist HDF5 dataset in a
// background thread, augments, normalizes to float32 and hands out batches. Not the training
// loop and not the dataset schema (common/dataset.h) or the shard plan (common/shard_plan.h).
//
// Rationale. The hot path must never wait on I/O, so a producer thread fills a bounded ring of
// batch slots (allocated once, huge pages where possible) while the trainer consumes them. The
// producer walks the rank's ordered indices (the shard plan) in segments whose samples come from
// a bounded set of storage chunks; it reads those chunks as contiguous runs with one hyperslab
// H5Dread per run into a window buffer (never one HDF5 call per image), then gathers, crops,
// flips and normalizes each sample straight into the slot in the caller's layout. Datasets
// smaller than a threshold are read whole once instead. Augmentation draws from a stream keyed
// by (seed, epoch, sample index), so a sample's augmentation does not depend on which rank or
// step reads it: in-memory and streaming modes, and resumes at any world size, give identical
// batches.
//
// Usage:
//   LoaderOptions o;  o.path = "train.h5";  o.rank = r;  o.world_size = w;  o.batch_size = 128;
//   ASSIGN_OR_RETURN(std::unique_ptr<Loader> loader, Loader::open(o));
//   RETURN_IF_ERROR(loader->start_epoch(epoch, samples_consumed));  // 0 unless resuming
//   BatchView b;
//   while (loader->next(b)) { train(b.images, b.labels, b.size); }
//   RETURN_IF_ERROR(loader->status());  // next() also returns false on an I/O error
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/dataset.h"
#include "common/shard_plan.h"
#include "common/status.h"

namespace resdist::data {

// Memory layout of the float32 images in a batch.
enum class BatchLayout {
  kNCHW,  // images[((n * C + c) * H + y) * W + x]
  kNHWC,  // images[((n * H + y) * W + x) * C + c]
};

// Whether the whole /images dataset is read into memory once (per Loader) instead of streamed.
enum class InMemoryMode { kAuto, kAlways, kNever };

struct AugmentOptions {
  // Random crop: the image is padded by `crop_padding` zero pixels (pixel value 0, i.e.
  // -mean/std after normalization, as torchvision's RandomCrop(padding) + Normalize) on every
  // side and an HxW window is taken at a uniform offset. 0 = no crop.
  int crop_padding = 0;
  bool horizontal_flip = false;  // mirror left-right with probability 1/2
};

struct LoaderOptions {
  std::string path;  // resdist HDF5 dataset (docs/dataset-format.md)
  int rank = 0;
  int world_size = 1;
  uint64_t seed = 0;     // shard order and augmentation
  int batch_size = 128;  // per rank
  BatchLayout layout = BatchLayout::kNCHW;
  AugmentOptions augment;  // leave off for evaluation
  bool shuffle = true;     // false: file order (still sharded round-robin)
  // kDrop for training (equal steps, a few samples unused per epoch); kPad for evaluation
  // (every sample seen; duplicates reported through BatchView::valid).
  RemainderPolicy remainder = RemainderPolicy::kDrop;
  bool drop_last_batch = false;  // drop the epoch's final partial batch (same on every rank)
  int prefetch_batches = 4;      // bounded queue depth (batches produced ahead)
  int64_t window_chunks = 16;    // chunks shuffled together (shard plan) and held in memory
  int64_t chunk_size = 0;        // samples per plan chunk; 0 = the /images chunking (or 1 MiB)
  // Per-channel normalization statistics (of pixel / 255) to use instead of the file's own:
  // an evaluation split is normalized with its training split's mean/std, as in PyTorch
  // recipes. Empty: the file's attributes. Otherwise one value per channel, std > 0.
  std::vector<float> normalize_mean, normalize_std;
  InMemoryMode in_memory = InMemoryMode::kAuto;
  int64_t in_memory_threshold_bytes = int64_t{2} << 30;  // kAuto: whole file if /images below
};

// One batch. Pointers are owned by the Loader and stay valid until the next call to next(),
// start_epoch() or the Loader's destruction.
struct BatchView {
  const float* images = nullptr;     // (size, C, H, W) for kNCHW, (size, H, W, C) for kNHWC
  const int32_t* labels = nullptr;   // (size)
  const int64_t* indices = nullptr;  // (size) sample indices in the file (for debugging/tests)
  int size = 0;                      // samples in this batch: batch_size, or fewer for the last one
  int valid = 0;     // samples [0, valid) are real; [valid, size) are pad duplicates (kPad only)
  int64_t step = 0;  // batch number since start_epoch (0-based)
};

class Loader {
 public:
  // Opens and validates the dataset (errors name the file and problem) and allocates every
  // buffer once. Reads the whole /images now when the in-memory mode says so.
  static StatusOr<std::unique_ptr<Loader>> open(const LoaderOptions& options);
  ~Loader();  // stops the producer thread
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  const DatasetInfo& info() const;
  const LoaderOptions& options() const;
  bool in_memory() const;
  int64_t image_floats() const;  // C * H * W

  // Starts producing `epoch`, skipping the first `samples_consumed` positions of the epoch's
  // global order (= global step * global batch; see common/shard_plan.h). Cancels an epoch in
  // progress. Errors only on bad arguments.
  Status start_epoch(int64_t epoch, int64_t samples_consumed = 0);

  // Samples and batches this rank produces in the current epoch (after start_epoch).
  int64_t samples_in_epoch() const;
  int64_t batches_in_epoch() const;

  // Waits for the next batch. Returns false at the end of the epoch or on an error; check
  // status() to tell them apart. The view stays valid until the next call.
  bool next(BatchView& batch);

  // Same, but copies the batch into caller-owned buffers: images must hold
  // batch_size * image_floats() floats in the configured layout, labels batch_size ints.
  bool next_into(float* images, int32_t* labels, BatchView* batch = nullptr);

  // OK, or the first error of the producer (e.g. an unreadable chunk).
  Status status() const;

 private:
  struct Impl;
  explicit Loader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Computes the normalized, augmented float image of one sample exactly as the loader does;
// `src` is (H, W, C) uint8, `dst` is (C, H, W) or (H, W, C). Exposed for tests and tools.
void transform_image(const DatasetInfo& info, const AugmentOptions& augment, BatchLayout layout,
                     uint64_t seed, int64_t epoch, int64_t sample, const uint8_t* src, float* dst);

}  // namespace resdist::data
