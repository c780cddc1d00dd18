// Where the training loop gets batches: an HDF5 dataset through the prefetching loader
// (worker/data), or seeded synthetic data generated in memory (no files needed).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/synthetic.h"
#include "worker/data/loader.h"

namespace resdist {

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual int64_t channels() const = 0;
  virtual int64_t height() const = 0;
  virtual int64_t width() const = 0;
  virtual int64_t num_classes() const = 0;
  virtual std::string describe() const = 0;
  // Prepares `epoch`, skipping the first `samples_consumed` samples of its global order.
  virtual Status start_epoch(int64_t epoch, int64_t samples_consumed) = 0;
  virtual int64_t batches_in_epoch() const = 0;
  // Copies the next batch into images (batch, C, H, W) plain NCHW and labels; returns false at
  // the end of the epoch or on error (then status() says which).
  virtual bool next(float* images, int32_t* labels, int* size, int* valid) = 0;
  virtual Status status() const = 0;
  // The per-channel mean/std (of pixel / 255) the images are normalized with, for sources that
  // read a dataset file; an evaluation split reuses its training split's. False: none.
  virtual bool normalization(std::vector<float>* mean, std::vector<float>* std) const {
    (void)mean, (void)std;
    return false;
  }
};

// Adapter over data::Loader (an HDF5 file, one rank's shard).
StatusOr<std::unique_ptr<BatchSource>> OpenLoaderSource(const data::LoaderOptions& options);

struct SyntheticSourceOptions {
  SyntheticSpec data;    // samples, shape, classes, seed
  int64_t first_sample = 0;  // generate samples [first, first + num_samples): an evaluation
                             // split uses the training seed and the indices after it
  int batch_size = 128;
  bool shuffle = true;
  bool drop_last_batch = true;
  uint64_t shuffle_seed = 0;
  // Data parallel: serve this rank's part of each epoch as the shard plan deals it
  // (common/shard_plan.h: global order by shuffle_seed and epoch, round-robin over ranks, kDrop
  // for training, kPad with `valid` counts for evaluation), exactly like the HDF5 loader. With
  // it, step k of W ranks with batch B reads the same samples as step k of 1 rank with batch W*B.
  bool use_shard_plan = false;
  int rank = 0;
  int world_size = 1;
};

// Generates the whole synthetic set once, normalizes it by its own per-channel mean/std, and
// serves it in a seeded shuffled order per epoch (single process), or one rank's shard of it.
StatusOr<std::unique_ptr<BatchSource>> MakeSyntheticSource(const SyntheticSourceOptions& options);

}  // namespace resdist
