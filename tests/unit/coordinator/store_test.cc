// The SQLite store: records survive closing and reopening the database.
#include "coordinator/store.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

namespace resdist::coordinator {
namespace {
namespace fs = std::filesystem;

TEST(StoreTest, EverythingIsBackAfterReopen) {
  const fs::path dir = fs::temp_directory_path() / ("resdist-store-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string db = (dir / "state.db").string();
  {
    auto store = Store::Open(db);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ(*(*store)->NextJobNumber(), 1);
    EXPECT_EQ(*(*store)->NextJobNumber(), 2);
    JobRecord job;
    job.status.set_job_id("job-0002");
    job.status.set_name("n");
    job.status.set_state(v1::JOB_STATE_RUNNING);
    job.status.set_attempt(1);
    job.status.set_workers(2);
    job.spec.set_name("n");
    job.spec.set_batch_size(64);
    job.worker_token = "tok";
    job.chunk_size = 7;
    ASSERT_TRUE((*store)->PutJob(job).ok());
    AttemptRecord a;
    a.info.set_number(1);
    a.info.set_state(v1::JOB_STATE_RUNNING);
    a.process_group = 4242;
    ASSERT_TRUE((*store)->PutAttempt("job-0002", a).ok());
    v1::RankStatus r;
    r.set_rank(1);
    r.set_host("h");
    r.set_last_seen_unix_ms(5);
    ASSERT_TRUE((*store)->PutWorker("job-0002", 1, r).ok());
    v1::CheckpointInfo c;
    c.set_path("/x/ck-1.h5");
    c.set_step(10);
    c.set_unix_ms(1);
    ASSERT_TRUE((*store)->PutCheckpoint("job-0002", c).ok());
    c.set_path("/x/ck-2.h5");
    c.set_step(20);
    c.set_unix_ms(2);
    ASSERT_TRUE((*store)->PutCheckpoint("job-0002", c).ok());
    for (int i = 1; i <= 3; ++i) {
      v1::Event e;
      e.set_seq(i);
      e.set_unix_ms(100 + i);
      e.set_kind("state");
      e.set_message("m" + std::to_string(i));
      ASSERT_TRUE((*store)->AppendEvent("job-0002", e).ok());
    }
    ASSERT_TRUE((*store)->PutRendezvous("job-0002", 1, "nccl", std::string("\0\1\2", 3)).ok());
  }
  auto store = Store::Open(db);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(*(*store)->NextJobNumber(), 3);  // never reused
  auto jobs = (*store)->LoadAll();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 1u);
  const LoadedJob& j = (*jobs)[0];
  EXPECT_EQ(j.job.status.job_id(), "job-0002");
  EXPECT_EQ(j.job.status.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(j.job.spec.batch_size(), 64);
  EXPECT_EQ(j.job.worker_token, "tok");
  EXPECT_EQ(j.job.chunk_size, 7);
  ASSERT_EQ(j.attempts.size(), 1u);
  EXPECT_EQ(j.attempts[0].process_group, 4242);
  ASSERT_EQ(j.ranks.size(), 1u);
  EXPECT_EQ(j.ranks[0].host(), "h");
  ASSERT_EQ(j.checkpoints.size(), 2u);
  EXPECT_EQ(j.checkpoints[1].step(), 20);
  EXPECT_EQ(j.last_event_seq, 3);
  auto events = (*store)->Events("job-0002", 1, 0);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].message(), "m3");
  auto rz = (*store)->Rendezvous("job-0002", 1);
  ASSERT_TRUE(rz.ok());
  ASSERT_EQ(rz->size(), 1u);
  EXPECT_EQ((*rz)[0].second, std::string("\0\1\2", 3));
  ASSERT_TRUE((*store)->DeleteCheckpoint("job-0002", "/x/ck-1.h5").ok());
  EXPECT_EQ((*(*store)->LoadAll())[0].checkpoints.size(), 1u);
  fs::remove_all(dir);
}

TEST(StoreTest, UnopenablePathIsAnError) {
  auto store = Store::Open("/nonexistent-dir-resdist/x/state.db");
  EXPECT_FALSE(store.ok());
}

}  // namespace
}  // namespace resdist::coordinator
