// Communicator and gradient reducer under mpirun -np 2 / -np 3: all-reduce (sum, average,
// blocking and asynchronous) for awkward sizes, broadcast, all-gather, barrier, and the reducer
// with many buckets against a direct computation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/integration/mpi/mpi_test_main.h"
#include "worker/train/reducer.h"

namespace resdist {
namespace {

// A value every rank can compute for (rank, index): small integers, so sums are exact in float.
float Val(int rank, size_t i) { return static_cast<float>((rank + 1) * 3 + static_cast<int>(i % 97)); }

class CommTest : public ::testing::TestWithParam<size_t> {};

TEST_P(CommTest, AllreduceSumAndAverage) {
  Communicator& c = TestComm();
  const size_t n = GetParam();
  std::vector<float> a(n);
  for (size_t i = 0; i < n; ++i) a[i] = Val(c.rank(), i);
  std::vector<float> b = a;
  c.allreduce_sum(a.data(), n);
  c.allreduce_avg(b.data(), n);
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    float want = 0;
    for (int r = 0; r < c.size(); ++r) want += Val(r, i);
    if (a[i] != want || std::fabs(b[i] - want / c.size()) > 1e-5f * want) ++bad;
  }
  EXPECT_EQ(bad, 0u) << "of " << n << " elements on rank " << c.rank();
}

TEST_P(CommTest, AsyncAllreduceDoubleAndBroadcast) {
  Communicator& c = TestComm();
  const size_t n = GetParam();
  std::vector<double> d(n);
  for (size_t i = 0; i < n; ++i) d[i] = 0.5 * Val(c.rank(), i);
  const CommTicket t = c.allreduce_sum_async(d.data(), n);
  c.wait(t);
  for (size_t i = 0; i < n; i += 1 + n / 1000) {
    double want = 0;
    for (int r = 0; r < c.size(); ++r) want += 0.5 * Val(r, i);
    ASSERT_EQ(d[i], want) << i;
  }
  std::vector<float> x(n, c.rank() == c.size() - 1 ? 7.f : -1.f);
  c.broadcast(x.data(), n * sizeof(float), c.size() - 1);
  for (size_t i = 0; i < n; i += 1 + n / 1000) ASSERT_EQ(x[i], 7.f) << i;
}

INSTANTIATE_TEST_SUITE_P(Sizes, CommTest, ::testing::Values(1, 7, 1000003));

TEST(Comm, ManyAsyncBucketsInFlight) {
  Communicator& c = TestComm();
  constexpr int kBuckets = 300;
  std::vector<std::vector<float>> bufs(kBuckets);
  std::vector<CommTicket> tickets;
  for (int k = 0; k < kBuckets; ++k) {
    bufs[k].assign(1 + (k * 37) % 5000, static_cast<float>(c.rank() + k));
    tickets.push_back(c.allreduce_sum_async(bufs[k].data(), bufs[k].size()));
  }
  for (size_t k = 1; k < tickets.size(); ++k) EXPECT_GT(tickets[k], tickets[k - 1]);
  c.wait(tickets.back());
  const float ranks_sum = c.size() * (c.size() - 1) / 2.f;
  for (int k = 0; k < kBuckets; ++k)
    for (float v : bufs[k]) ASSERT_EQ(v, ranks_sum + c.size() * k) << "bucket " << k;
}

TEST(Comm, AllgatherBarrierAndRanks) {
  Communicator& c = TestComm();
  const auto all = c.allgather(static_cast<uint64_t>(c.rank()) * 1000 + 1);
  ASSERT_EQ(static_cast<int>(all.size()), c.size());
  for (int r = 0; r < c.size(); ++r) EXPECT_EQ(all[r], static_cast<uint64_t>(r) * 1000 + 1);
  c.barrier();
  EXPECT_GE(c.local_rank(), 0);
  EXPECT_LT(c.local_rank(), c.local_size());
  EXPECT_LE(c.local_size(), c.size());
}

// Parameters of awkward sizes, reported in an order that is not the bucket order.
TEST(Reducer, ManyBucketsMatchDirectAverage) {
  Communicator& c = TestComm();
  const std::vector<int64_t> sizes = {3, 1000, 17, 1, 4096, 250, 7, 33333, 5, 64};
  std::vector<Parameter> params(sizes.size());
  std::vector<Parameter*> ptrs;
  for (size_t i = 0; i < sizes.size(); ++i) {
    params[i].name = "p" + std::to_string(i);
    params[i].value.resize(Dims{sizes[i]});
    params[i].grad.resize(Dims{sizes[i]});
    ptrs.push_back(&params[i]);
  }
  GradientReducer reducer(&c, ptrs, /*bucket_bytes=*/2 * 1024);
  EXPECT_GE(reducer.buckets().size(), 6u);
  for (int step = 0; step < 3; ++step) {
    reducer.begin_step();
    for (size_t k = 0; k < params.size(); ++k) {
      // Backward-like order with a swap in the middle; the last parameter is never reported
      // (finish() must still reduce it).
      const size_t i = params.size() - 1 - (k == 3 ? 4 : k == 4 ? 3 : k);
      if (i == params.size() - 1 && k == 0) continue;
      float* g = params[i].grad.data();
      for (int64_t j = 0; j < sizes[i]; ++j) g[j] = static_cast<float>((c.rank() + 1) * (j % 13) + step);
      reducer.grad_ready(params[i]);
    }
    float* last = params.back().grad.data();
    for (int64_t j = 0; j < sizes.back(); ++j) last[j] = static_cast<float>((c.rank() + 1) * (j % 13) + step);
    reducer.finish(1.0f / c.size());
    const float rank_sum = c.size() * (c.size() + 1) / 2.f;
    for (size_t i = 0; i < params.size(); ++i)
      for (int64_t j = 0; j < sizes[i]; ++j) {
        const float want = (rank_sum * (j % 13) + c.size() * step) / c.size();
        ASSERT_NEAR(params[i].grad.data()[j], want, 1e-5f * (1 + want)) << params[i].name << "[" << j << "]";
      }
  }
}

}  // namespace
}  // namespace resdist
