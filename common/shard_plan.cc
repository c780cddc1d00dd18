// Shard plan implementation: global epoch order (chunk permutation + window shuffle) dealt
// round-robin to ranks. See shard_plan.h for the rationale.
#include "common/shard_plan.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "common/rng.h"

namespace resdist {
namespace {

constexpr uint64_t kChunkStream = 0x6368756e6b73ULL;   // "chunks"
constexpr uint64_t kWindowStream = 0x77696e646f77ULL;  // "window"

int64_t remaining(const ShardPlanOptions& o) {
  return o.num_samples - std::min(std::max<int64_t>(o.samples_consumed, 0), o.num_samples);
}

}  // namespace

Status validate_shard_plan_options(const ShardPlanOptions& o) {
  if (o.num_samples < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shard plan: num_samples is %d, expected >= 0", o.num_samples));
  }
  if (o.world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shard plan: world_size is %d, expected >= 1", o.world_size));
  }
  if (o.chunk_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shard plan: chunk_size is %d, expected >= 1", o.chunk_size));
  }
  if (o.window_chunks < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shard plan: window_chunks is %d, expected >= 1", o.window_chunks));
  }
  if (o.samples_consumed < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shard plan: samples_consumed is %d, expected >= 0", o.samples_consumed));
  }
  if (o.epoch < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("shard plan: epoch is %d, expected >= 0", o.epoch));
  }
  return absl::OkStatus();
}

StatusOr<std::vector<int64_t>> epoch_order(const ShardPlanOptions& o) {
  RETURN_IF_ERROR(validate_shard_plan_options(o));
  const int64_t n = o.num_samples;
  std::vector<int64_t> order(static_cast<size_t>(n));
  if (!o.shuffle) {
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    return order;
  }
  const int64_t num_chunks = (n + o.chunk_size - 1) / o.chunk_size;
  std::vector<int64_t> chunks(static_cast<size_t>(num_chunks));
  for (int64_t c = 0; c < num_chunks; ++c) chunks[c] = c;
  const uint64_t epoch = static_cast<uint64_t>(o.epoch);
  Rng chunk_rng(hash_keys({o.seed, epoch, kChunkStream}));
  chunk_rng.shuffle(chunks.begin(), chunks.end());

  Rng window_rng(hash_keys({o.seed, epoch, kWindowStream}));
  int64_t pos = 0;
  for (int64_t w = 0; w < num_chunks; w += o.window_chunks) {
    const int64_t window_begin = pos;
    const int64_t w_end = std::min(num_chunks, w + o.window_chunks);
    for (int64_t k = w; k < w_end; ++k) {
      const int64_t first = chunks[k] * o.chunk_size;
      const int64_t last = std::min(n, first + o.chunk_size);
      for (int64_t i = first; i < last; ++i) order[pos++] = i;
    }
    window_rng.shuffle(order.begin() + window_begin, order.begin() + pos);
  }
  return order;
}

int64_t shard_samples_per_rank(const ShardPlanOptions& o) {
  if (o.world_size < 1) return 0;
  const int64_t r = remaining(o);
  return o.remainder == RemainderPolicy::kDrop ? r / o.world_size
                                               : (r + o.world_size - 1) / o.world_size;
}

namespace {

// Deals the rest of `order` to `rank`. Padding positions wrap to the start of G.
RankShard deal(const ShardPlanOptions& o, const std::vector<int64_t>& order, int rank) {
  RankShard shard;
  const int64_t n = o.num_samples;
  const int64_t consumed = n - remaining(o);
  const int64_t left = remaining(o);
  const int64_t per_rank = shard_samples_per_rank(o);
  shard.indices.resize(static_cast<size_t>(per_rank));
  shard.num_valid = 0;
  for (int64_t j = 0; j < per_rank; ++j) {
    const int64_t p = rank + j * o.world_size;  // position in what is left of G
    if (p < left) {
      shard.indices[j] = order[consumed + p];
      ++shard.num_valid;
    } else {
      shard.indices[j] = order[(p - left) % n];
    }
  }
  return shard;
}

}  // namespace

StatusOr<RankShard> plan_rank_shard(const ShardPlanOptions& o, int rank) {
  RETURN_IF_ERROR(validate_shard_plan_options(o));
  if (rank < 0 || rank >= o.world_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "shard plan: rank is %d, expected 0 <= rank < world_size (%d)", rank, o.world_size));
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> order, epoch_order(o));
  return deal(o, order, rank);
}

StatusOr<ShardPlan> plan_shards(const ShardPlanOptions& o) {
  ASSIGN_OR_RETURN(std::vector<int64_t> order, epoch_order(o));
  ShardPlan plan;
  plan.samples_per_rank = shard_samples_per_rank(o);
  const int64_t left = remaining(o);
  const int64_t dealt = plan.samples_per_rank * o.world_size;
  plan.num_dropped = std::max<int64_t>(0, left - dealt);
  plan.num_padded = std::max<int64_t>(0, dealt - left);
  plan.ranks.reserve(static_cast<size_t>(o.world_size));
  for (int r = 0; r < o.world_size; ++r) plan.ranks.push_back(deal(o, order, r));
  return plan;
}

}  // namespace resdist
