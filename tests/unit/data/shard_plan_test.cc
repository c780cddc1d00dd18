// Properties of the shard plan (common/shard_plan.h): disjoint, covering, equal, deterministic,
// reshuffled per epoch, chunk-local, and exactly resumable at any step and world size.
#include "common/shard_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

namespace resdist {
namespace {

ShardPlanOptions make(int64_t n, int w, RemainderPolicy p, int64_t chunk = 1, int64_t window = 4,
                      int64_t epoch = 0) {
  ShardPlanOptions o;
  o.num_samples = n;
  o.world_size = w;
  o.seed = 42;
  o.epoch = epoch;
  o.remainder = p;
  o.chunk_size = chunk;
  o.window_chunks = window;
  return o;
}

TEST(ShardPlan, DisjointCoveringEqualDrop) {
  for (int64_t n : {0, 1, 7, 100, 1001}) {
    for (int w : {1, 2, 3, 8}) {
      for (int64_t chunk : {1, 5, 64}) {
        auto plan = plan_shards(make(n, w, RemainderPolicy::kDrop, chunk));
        ASSERT_TRUE(plan.ok()) << plan.status();
        std::set<int64_t> seen;
        for (const RankShard& r : plan->ranks) {
          EXPECT_EQ(static_cast<int64_t>(r.indices.size()), n / w);
          EXPECT_EQ(r.num_valid, n / w);
          for (int64_t i : r.indices) {
            EXPECT_GE(i, 0);
            EXPECT_LT(i, n);
            EXPECT_TRUE(seen.insert(i).second) << "sample " << i << " twice, n=" << n << " w=" << w;
          }
        }
        // Documented remainder: exactly n mod w samples are unused.
        EXPECT_EQ(static_cast<int64_t>(seen.size()), n / w * w);
        EXPECT_EQ(plan->num_dropped, n % w);
        EXPECT_EQ(plan->num_padded, 0);
      }
    }
  }
}

TEST(ShardPlan, PadCoversEverythingAndMarksDuplicates) {
  for (int64_t n : {1, 7, 100, 1001}) {
    for (int w : {1, 2, 3, 8}) {
      auto plan = plan_shards(make(n, w, RemainderPolicy::kPad, 3));
      ASSERT_TRUE(plan.ok());
      const int64_t per = (n + w - 1) / w;
      std::multiset<int64_t> valid;
      int64_t padded = 0;
      for (const RankShard& r : plan->ranks) {
        ASSERT_EQ(static_cast<int64_t>(r.indices.size()), per);
        for (int64_t j = 0; j < per; ++j) {
          if (j < r.num_valid) {
            valid.insert(r.indices[j]);
          } else {
            ++padded;
          }
        }
      }
      EXPECT_EQ(static_cast<int64_t>(valid.size()), n);
      EXPECT_EQ(std::set<int64_t>(valid.begin(), valid.end()).size(), static_cast<size_t>(n));
      EXPECT_EQ(padded, per * w - n);
      EXPECT_EQ(plan->num_padded, per * w - n);
    }
  }
}

TEST(ShardPlan, DeterministicAndDifferentPerEpoch) {
  auto a = plan_shards(make(500, 4, RemainderPolicy::kDrop, 7, 3, 5));
  auto b = plan_shards(make(500, 4, RemainderPolicy::kDrop, 7, 3, 5));
  auto c = plan_shards(make(500, 4, RemainderPolicy::kDrop, 7, 3, 6));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(a->ranks[r].indices, b->ranks[r].indices);
    EXPECT_NE(a->ranks[r].indices, c->ranks[r].indices);
  }
  ShardPlanOptions other_seed = make(500, 4, RemainderPolicy::kDrop, 7, 3, 5);
  other_seed.seed = 43;
  EXPECT_NE(epoch_order(other_seed).value(),
            epoch_order(make(500, 4, RemainderPolicy::kDrop, 7, 3, 5)).value());
}

// The plan must be identical on every machine and standard library (workers and coordinator
// compute it independently): pin one small case.
TEST(ShardPlan, PinnedOrder) {
  ShardPlanOptions o = make(12, 1, RemainderPolicy::kDrop, 3, 2, 1);
  auto order = epoch_order(o);
  ASSERT_TRUE(order.ok());
  EXPECT_EQ(*order, (std::vector<int64_t>{9, 7, 11, 10, 8, 6, 0, 5, 2, 3, 4, 1}));
}

TEST(ShardPlan, NoShuffleIsIdentityRoundRobin) {
  ShardPlanOptions o = make(10, 3, RemainderPolicy::kPad);
  o.shuffle = false;
  auto plan = plan_shards(o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->ranks[0].indices, (std::vector<int64_t>{0, 3, 6, 9}));
  EXPECT_EQ(plan->ranks[1].indices, (std::vector<int64_t>{1, 4, 7, 0}));
  EXPECT_EQ(plan->ranks[1].num_valid, 3);
  EXPECT_EQ(plan->ranks[2].indices, (std::vector<int64_t>{2, 5, 8, 1}));
}

// Each window of the global order comes from exactly `window_chunks` storage chunks, so a reader
// holds few chunks at a time.
TEST(ShardPlan, WindowsAreChunkLocal) {
  const int64_t n = 1024, chunk = 16, window = 4;  // 64 whole chunks, 16 windows
  auto order = epoch_order(make(n, 1, RemainderPolicy::kDrop, chunk, window));
  ASSERT_TRUE(order.ok());
  for (int64_t start = 0; start < n; start += chunk * window) {
    std::set<int64_t> chunks;
    for (int64_t p = start; p < start + chunk * window; ++p) chunks.insert((*order)[p] / chunk);
    EXPECT_EQ(static_cast<int64_t>(chunks.size()), window);
  }
  // And the order within a window is not the file order.
  EXPECT_FALSE(std::is_sorted(order->begin(), order->begin() + chunk * window));
}

// Resume after `steps` steps of batch `b` per rank on `w1` ranks, continuing on `w2` ranks:
// consumed + resumed must be disjoint and cover everything except the documented remainder.
TEST(ShardPlan, ResumeAtAnyStepAndWorldSize) {
  for (RemainderPolicy policy : {RemainderPolicy::kDrop, RemainderPolicy::kPad}) {
    for (int64_t n : {97, 256}) {
      for (int w1 : {1, 2, 3, 4}) {
        for (int w2 : {1, 2, 3, 5}) {
          for (int64_t b : {1, 4, 7}) {
            ShardPlanOptions first = make(n, w1, policy, 8, 2, 3);
            auto fresh = plan_shards(first).value();
            const int64_t max_steps = fresh.samples_per_rank / b;
            for (int64_t steps = 0; steps <= max_steps; ++steps) {
              // What the first run consumed: the first steps*b samples of every rank.
              std::set<int64_t> consumed;
              for (const RankShard& r : fresh.ranks) {
                for (int64_t j = 0; j < steps * b; ++j) consumed.insert(r.indices[j]);
              }
              ShardPlanOptions resume = make(n, w2, policy, 8, 2, 3);
              resume.samples_consumed = samples_consumed_at(steps, b * w1);
              auto rest = plan_shards(resume);
              ASSERT_TRUE(rest.ok()) << rest.status();
              std::set<int64_t> later;
              for (const RankShard& r : rest->ranks) {
                for (int64_t j = 0; j < r.num_valid; ++j) {
                  ASSERT_FALSE(consumed.count(r.indices[j]))
                      << "sample " << r.indices[j] << " repeated after resume: n=" << n
                      << " w1=" << w1 << " w2=" << w2 << " b=" << b << " steps=" << steps;
                  ASSERT_TRUE(later.insert(r.indices[j]).second);
                }
              }
              // Exactly the not-yet-consumed samples, minus at most w2-1 dropped (kDrop).
              const int64_t missing = n - static_cast<int64_t>(consumed.size() + later.size());
              if (policy == RemainderPolicy::kPad) {
                EXPECT_EQ(missing, 0);
              } else {
                EXPECT_EQ(missing, rest->num_dropped);
                EXPECT_LT(missing, w2);
              }
              // The resumed samples are the continuation of the same global order.
              auto order = epoch_order(resume).value();
              std::set<int64_t> tail(order.begin() + std::min<int64_t>(n, resume.samples_consumed),
                                     order.end());
              for (int64_t s : later) EXPECT_TRUE(tail.count(s));
            }
          }
        }
      }
    }
  }
}

TEST(ShardPlan, ConsumedBeyondEndIsEmpty) {
  ShardPlanOptions o = make(10, 2, RemainderPolicy::kPad);
  o.samples_consumed = 12;
  auto plan = plan_shards(o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->samples_per_rank, 0);
}

TEST(ShardPlan, RejectsBadOptions) {
  ShardPlanOptions o = make(10, 0, RemainderPolicy::kDrop);
  auto s = plan_shards(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("world_size is 0"), std::string::npos) << s;
  o = make(10, 2, RemainderPolicy::kDrop);
  EXPECT_FALSE(plan_rank_shard(o, 2).ok());
  o.chunk_size = 0;
  EXPECT_NE(plan_shards(o).status().message().find("chunk_size is 0"), std::string::npos);
  o = make(-1, 2, RemainderPolicy::kDrop);
  EXPECT_FALSE(plan_shards(o).ok());
  o = make(10, 2, RemainderPolicy::kDrop);
  o.samples_consumed = -3;
  EXPECT_FALSE(plan_shards(o).ok());
}

TEST(ShardPlan, RankShardMatchesFullPlan) {
  ShardPlanOptions o = make(333, 5, RemainderPolicy::kPad, 10, 3, 2);
  o.samples_consumed = 40;
  auto plan = plan_shards(o).value();
  for (int r = 0; r < 5; ++r) {
    auto shard = plan_rank_shard(o, r).value();
    EXPECT_EQ(shard.indices, plan.ranks[r].indices);
    EXPECT_EQ(shard.num_valid, plan.ranks[r].num_valid);
  }
}

}  // namespace
}  // namespace resdist
