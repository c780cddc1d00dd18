// The shard plan: which samples each rank reads in an epoch, and in what order. A pure function
// shared by workers (to read), the coordinator (to display) and tests; it does no I/O.
//
// Rationale. Every rank must be able to compute its own slice without talking to anyone, so the
// plan is a function of (N, world size, seed, epoch, remainder policy, resume point) only.
//
// 1. One global order G per (N, seed, epoch, chunking), independent of the world size: the
//    storage chunks (runs of `chunk_size` consecutive samples, matching the HDF5 chunking of
//    /images) are permuted, cut into windows of `window_chunks` chunks, and the samples of each
//    window are shuffled together. A reader therefore touches one window of chunks at a time,
//    reads it as a few contiguous chunk runs, and holds it in memory while it draws from it.
// 2. Ranks take G round-robin: rank r gets the positions r, r + W, r + 2W, ... of what is left
//    of G. After every rank has consumed k samples, exactly the first k*W positions of G are
//    consumed, whatever the batch size. So a resume point is one number, `samples_consumed`
//    (= global step * global batch), and resuming with another world size simply deals the rest
//    of G to the new ranks: nothing repeated, nothing skipped.
// 3. Equal counts per rank so that steps align. The remainder R mod W (R = samples left) is
//    either dropped (kDrop: the last R mod W positions of G, a different set each epoch) or
//    padded (kPad: positions past the end wrap to the start of G; they are duplicates, always
//    at the tail of a rank's list, and counted by `num_valid` so evaluation never counts a
//    sample twice).
//
// Cost of (2): in a window of M chunks each rank uses 1/W of the samples, so it reads W times
// the bytes it needs (from the page cache or a parallel file system). This buys exact,
// world-size-independent resume; with W == 1 there is no overhead.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace resdist {

enum class RemainderPolicy {
  kDrop,  // each rank gets floor(R / W) samples; the last R mod W positions of G are unused
  kPad,   // each rank gets ceil(R / W) samples; missing positions repeat the start of G
};

struct ShardPlanOptions {
  int64_t num_samples = 0;  // N, samples in the dataset (split)
  int world_size = 1;       // W, number of ranks
  uint64_t seed = 0;
  int64_t epoch = 0;
  RemainderPolicy remainder = RemainderPolicy::kDrop;
  bool shuffle = true;         // false: G is 0, 1, ..., N-1 (e.g. evaluation)
  int64_t chunk_size = 1;      // samples per storage chunk; 1 = plain uniform shuffle
  int64_t window_chunks = 16;  // chunks whose samples are shuffled together
  // Resume point: positions of this epoch's global order G already consumed by all ranks
  // together, i.e. global step * global batch. Values >= N mean the epoch is over.
  int64_t samples_consumed = 0;
};

// One rank's part of an epoch.
struct RankShard {
  std::vector<int64_t> indices;  // sample indices in the order to be read
  int64_t num_valid = 0;         // indices[0, num_valid) are real; the rest are pad duplicates
};

struct ShardPlan {
  std::vector<RankShard> ranks;  // [world_size]
  int64_t samples_per_rank = 0;  // equal for every rank
  int64_t num_dropped = 0;       // kDrop: positions of G not dealt to anyone
  int64_t num_padded = 0;        // kPad: duplicate positions added over all ranks
};

// Checks the options; every error names the field, its value and what is allowed.
Status validate_shard_plan_options(const ShardPlanOptions& options);

// The epoch's global order G (size N), independent of world size and resume point.
StatusOr<std::vector<int64_t>> epoch_order(const ShardPlanOptions& options);

// Samples each rank gets for the rest of the epoch (same for all ranks).
int64_t shard_samples_per_rank(const ShardPlanOptions& options);

// The ordered indices of one rank for the rest of the epoch (after `samples_consumed`).
StatusOr<RankShard> plan_rank_shard(const ShardPlanOptions& options, int rank);

// The plan for every rank (what the coordinator displays and tests check).
StatusOr<ShardPlan> plan_shards(const ShardPlanOptions& options);

// The resume point after `global_step` steps of `global_batch` samples (all ranks together).
inline int64_t samples_consumed_at(int64_t global_step, int64_t global_batch) {
  return global_step * global_batch;
}

}  // namespace resdist
