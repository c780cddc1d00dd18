// Trainer-level checkpoints in one process (issue 6): K steps uninterrupted versus k steps,
// stop (checkpoint), resume, continue to K, compared bit for bit (parameters, batch-norm
// buffers, momentum) at and off epoch boundaries, with 1 and 2 threads; the triggers (every N
// steps, every T seconds, epoch end, on request, final) and the hooks; SIGTERM through the real
// handler; a corrupt newest checkpoint skipped in favour of the previous one; resume errors; and
// the job file's checkpoint: / resume: keys.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/integration/checkpoint/resume_util.h"
#include "tests/unit/checkpoint/test_util.h"

namespace resdist {
namespace {

using ::resdist::testing::CompareCheckpoints;
using ::resdist::testing::Comparison;
using ::resdist::testing::MlpJob;
using ::resdist::testing::ReadBytes;
using ::resdist::testing::ResNetJob;
using ::resdist::testing::RunJob;
using ::resdist::testing::RunOutcome;
using ::resdist::testing::TempDir;
using ::resdist::testing::WriteBytes;

std::unique_ptr<Communicator> One() { return MakeSingleCommunicator(); }

std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> out;
  StatusOr<std::vector<CheckpointFile>> files = ListCheckpoints(dir);
  if (!files.ok()) return out;
  for (auto it = files->rbegin(); it != files->rend(); ++it)  // oldest first
    out.push_back(std::filesystem::path(it->path).filename().string());
  return out;
}

void FlipByteInTheMiddle(const std::string& path) {
  std::string bytes = ReadBytes(path);
  ASSERT_GT(bytes.size(), 100u);
  bytes[bytes.size() / 2] ^= 0x5a;
  WriteBytes(path, bytes);
}

struct Case {
  const char* name;
  bool resnet;
  int64_t stop_at;  // k
  int64_t threads;
};

class ExactResume : public ::testing::TestWithParam<Case> {};

// K steps straight through == k steps, stop, resume (latest), K - k steps: every parameter,
// buffer and momentum value has the same bits.
TEST_P(ExactResume, StopAndResumeIsBitIdentical) {
  const Case& c = GetParam();
  TempDir ref_dir, dir;
  auto job = [&](const std::string& d) {
    JobSpec j = c.resnet ? ResNetJob(d) : MlpJob(d);
    j.threads_per_worker = c.threads;
    return j;
  };
  auto comm = One();
  const RunOutcome ref = RunJob(job(ref_dir.path()), comm.get());
  ASSERT_TRUE(ref.status.ok()) << ref.status;
  const int64_t steps_per_epoch = ref.reports.front().steps_per_epoch;
  const int64_t total = ref.reports.front().total_steps;
  ASSERT_EQ(ref.result.steps, total);
  ASSERT_LT(c.stop_at, total);

  const RunOutcome first = RunJob(job(dir.path()), comm.get(), c.stop_at);
  ASSERT_TRUE(first.status.ok()) << first.status;
  EXPECT_TRUE(first.result.stopped);
  EXPECT_EQ(first.result.stop_reason, "stop requested");
  EXPECT_EQ(first.result.steps, c.stop_at);
  ASSERT_FALSE(first.result.last_checkpoint.empty());
  StatusOr<CheckpointMeta> meta = ValidateCheckpoint(first.result.last_checkpoint);
  ASSERT_TRUE(meta.ok()) << meta.status();
  // The position: the epoch the next step belongs to and the samples of it already consumed.
  EXPECT_EQ(meta->global_step, c.stop_at);
  EXPECT_EQ(meta->epoch, c.stop_at / steps_per_epoch);
  EXPECT_EQ(meta->samples_consumed, (c.stop_at % steps_per_epoch) * 16);
  EXPECT_EQ(meta->rng_state, absl::StrCat("nn.step=", c.stop_at));

  JobSpec resumed_job = job(dir.path());
  resumed_job.resume = "latest";
  const RunOutcome second = RunJob(resumed_job, comm.get());
  ASSERT_TRUE(second.status.ok()) << second.status;
  EXPECT_EQ(second.result.resumed_from, first.result.last_checkpoint);
  EXPECT_EQ(second.result.resumed_at_step, c.stop_at);
  EXPECT_EQ(second.result.steps, total);
  ASSERT_FALSE(second.reports.empty());
  EXPECT_EQ(second.reports.front().global_step, c.stop_at + 1);
  EXPECT_EQ(second.reports.front().step_in_epoch, c.stop_at % steps_per_epoch + 1);
  EXPECT_EQ(static_cast<int64_t>(second.reports.size()), total - c.stop_at);
  // The learning rate continues the schedule where it stopped.
  EXPECT_EQ(second.reports.front().lr, ref.reports[c.stop_at].lr);

  const Comparison cmp =
      CompareCheckpoints(ref.result.last_checkpoint, second.result.last_checkpoint);
  EXPECT_EQ(cmp.error, "");
  EXPECT_TRUE(cmp.same_bits) << "worst difference " << cmp.worst;
  // Same evaluation, too.
  EXPECT_EQ(second.result.final_eval.loss, ref.result.final_eval.loss);
  EXPECT_EQ(second.result.final_eval.accuracy, ref.result.final_eval.accuracy);
}

INSTANTIATE_TEST_SUITE_P(
    Trainer, ExactResume,
    ::testing::Values(Case{"MlpMidEpoch", false, 17, 1},      // epoch 1, step 5 of 12
                      Case{"MlpEpochBoundary", false, 12, 1},  // after the last step of epoch 0
                      Case{"ResNetMidEpoch", true, 8, 1},      // epoch 1, step 2 of 6
                      Case{"ResNetMidEpoch2Threads", true, 9, 2}),
    [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

TEST(Checkpoints, TriggersAndHooks) {
  TempDir dir;
  JobSpec j = MlpJob(dir.path());
  j.checkpoint.every_steps = 7;
  auto comm = One();
  // every 7 steps (7, 14, 21, 28, 35), epoch ends (12, 24), on request (9), final (36).
  const RunOutcome r = RunJob(j, comm.get(), 0, {9});
  ASSERT_TRUE(r.status.ok()) << r.status;
  const std::vector<std::string> expected = {
      "ckpt-e0000-s000000007.h5", "ckpt-e0000-s000000009.h5", "ckpt-e0001-s000000012.h5",
      "ckpt-e0001-s000000014.h5", "ckpt-e0001-s000000021.h5", "ckpt-e0002-s000000024.h5",
      "ckpt-e0002-s000000028.h5", "ckpt-e0002-s000000035.h5", "ckpt-e0003-s000000036.h5"};
  EXPECT_EQ(Names(dir.path()), expected);
  ASSERT_EQ(r.checkpoints_notified.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_EQ(r.checkpoints_notified[i], dir.file(expected[i]));
  EXPECT_EQ(r.result.last_checkpoint, dir.file("ckpt-e0003-s000000036.h5"));
  // StepReport.last_checkpoint names the newest file completed at the time of the step (the
  // writer runs in the background, so the one just requested may still be in flight).
  EXPECT_EQ(r.reports.front().last_checkpoint, "");
  EXPECT_TRUE(absl::StartsWith(r.reports.back().last_checkpoint, dir.file("ckpt-e0002-s0000000")))
      << r.reports.back().last_checkpoint;
  // The epoch-end file is the start of the next epoch.
  StatusOr<CheckpointMeta> m = ValidateCheckpoint(dir.file("ckpt-e0001-s000000012.h5"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->samples_consumed, 0);
  EXPECT_EQ(m->world_size, 1);
  EXPECT_EQ(m->seed, 11u);
  StatusOr<JobSpec> stored = ParseJobSpec(m->job_spec);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(stored->checkpoint.every_steps, 7);

  // keep_last: only the newest K remain after each write.
  TempDir kept;
  j.checkpoint.dir = kept.path();
  j.checkpoint.keep_last = 2;
  ASSERT_TRUE(RunJob(j, comm.get()).status.ok());
  EXPECT_EQ(Names(kept.path()),
            (std::vector<std::string>{"ckpt-e0002-s000000035.h5", "ckpt-e0003-s000000036.h5"}));
}

TEST(Checkpoints, EverySecondsWritesWhileTrainingAndSkipsWhileBusy) {
  TempDir dir;
  JobSpec j = MlpJob(dir.path());
  j.checkpoint.every_seconds = 1e-6;  // due after every step: only "busy" holds it back
  auto comm = One();
  const RunOutcome r = RunJob(j, comm.get());
  ASSERT_TRUE(r.status.ok()) << r.status;
  const size_t n = Names(dir.path()).size();
  EXPECT_GE(n, 4u);   // at least the epoch ends, the final one and some timed ones
  EXPECT_LE(n, 36u);  // never more than one per step
  for (const std::string& name : Names(dir.path()))
    EXPECT_TRUE(ValidateCheckpoint(dir.file(name)).ok()) << name;
}

TEST(Checkpoints, SigtermStopsAtAStepBoundaryWithACheckpoint) {
  TempDir ref_dir, dir;
  auto comm = One();
  const RunOutcome ref = RunJob(MlpJob(ref_dir.path()), comm.get());
  ASSERT_TRUE(ref.status.ok()) << ref.status;
  JobOverrides ov;
  ov.TEST_sigterm_at_step = 20;
  ov.TEST_sigterm_rank = 0;
  const RunOutcome first = RunJob(MlpJob(dir.path()), comm.get(), 0, {}, ov);
  ASSERT_TRUE(first.status.ok()) << first.status;
  EXPECT_TRUE(first.result.stopped);
  EXPECT_EQ(first.result.stop_reason, "SIGTERM");
  EXPECT_EQ(first.result.steps, 20);
  EXPECT_TRUE(SigtermReceived());
  EXPECT_EQ(first.result.last_checkpoint, dir.file("ckpt-e0001-s000000020.h5"));
  JobSpec again = MlpJob(dir.path());
  again.resume = "latest";
  const RunOutcome second = RunJob(again, comm.get());
  ASSERT_TRUE(second.status.ok()) << second.status;
  EXPECT_EQ(second.result.resumed_at_step, 20);
  const Comparison cmp = CompareCheckpoints(ref.result.last_checkpoint, second.result.last_checkpoint);
  EXPECT_TRUE(cmp.same_bits) << cmp.error << cmp.worst;
}

TEST(Checkpoints, CorruptNewestIsSkippedForThePreviousOne) {
  TempDir ref_dir, dir;
  auto comm = One();
  const RunOutcome ref = RunJob(MlpJob(ref_dir.path()), comm.get());
  ASSERT_TRUE(ref.status.ok()) << ref.status;
  JobSpec j = MlpJob(dir.path());
  j.checkpoint.every_steps = 5;
  const RunOutcome first = RunJob(j, comm.get(), /*stop_at=*/17);
  ASSERT_TRUE(first.status.ok()) << first.status;
  ASSERT_EQ(first.result.last_checkpoint, dir.file("ckpt-e0001-s000000017.h5"));
  FlipByteInTheMiddle(first.result.last_checkpoint);  // the checksum no longer matches
  j.resume = "latest";
  const RunOutcome second = RunJob(j, comm.get());
  ASSERT_TRUE(second.status.ok()) << second.status;
  EXPECT_EQ(second.result.resumed_from, dir.file("ckpt-e0001-s000000015.h5"));
  EXPECT_EQ(second.result.resumed_at_step, 15);
  EXPECT_EQ(second.result.steps, 36);
  const Comparison cmp = CompareCheckpoints(ref.result.last_checkpoint, second.result.last_checkpoint);
  EXPECT_TRUE(cmp.same_bits) << cmp.error << cmp.worst;
  // The damaged file is still there (never deleted by a resume); the resume point is protected.
  EXPECT_TRUE(std::filesystem::exists(dir.file("ckpt-e0001-s000000017.h5")));

  // Every file damaged (truncated): an error, never a silent start from scratch.
  for (const std::string& name : Names(dir.path())) {
    const std::string bytes = ReadBytes(dir.file(name));
    WriteBytes(dir.file(name), bytes.substr(0, bytes.size() / 2));
  }
  const RunOutcome broken = RunJob(j, comm.get());
  EXPECT_EQ(broken.status.code(), absl::StatusCode::kFailedPrecondition) << broken.status;
  EXPECT_TRUE(absl::StrContains(broken.status.message(), "truncated")) << broken.status;
}

TEST(Checkpoints, ResumeChoicesAndErrors) {
  TempDir dir, empty;
  auto comm = One();
  JobSpec j = MlpJob(dir.path());
  j.checkpoint.every_steps = 10;
  ASSERT_TRUE(RunJob(j, comm.get(), /*stop_at=*/22).status.ok());

  // A named file.
  JobSpec named = MlpJob(empty.path());
  named.resume = dir.file("ckpt-e0000-s000000010.h5");
  const RunOutcome from_named = RunJob(named, comm.get());
  ASSERT_TRUE(from_named.status.ok()) << from_named.status;
  EXPECT_EQ(from_named.result.resumed_at_step, 10);
  EXPECT_EQ(from_named.result.steps, 36);
  EXPECT_EQ(from_named.reports.front().epoch, 0);
  EXPECT_EQ(from_named.reports.front().step_in_epoch, 11);

  // `latest` in a directory without checkpoints: a fresh start.
  TempDir fresh;
  JobSpec latest_empty = MlpJob(fresh.path());
  latest_empty.resume = "latest";
  const RunOutcome from_scratch = RunJob(latest_empty, comm.get(), /*stop_at=*/3);
  ASSERT_TRUE(from_scratch.status.ok()) << from_scratch.status;
  EXPECT_EQ(from_scratch.result.resumed_from, "");
  EXPECT_EQ(from_scratch.reports.front().global_step, 1);

  // A missing file names itself.
  JobSpec missing = MlpJob(empty.path());
  missing.resume = dir.file("nope.h5");
  const RunOutcome no_file = RunJob(missing, comm.get());
  EXPECT_EQ(no_file.status.code(), absl::StatusCode::kNotFound) << no_file.status;
  EXPECT_TRUE(absl::StrContains(no_file.status.message(), "nope.h5")) << no_file.status;

  // Another global batch: refused, naming both.
  JobSpec bigger = MlpJob(dir.path());
  bigger.resume = "latest";
  bigger.batch_size = 32;
  const RunOutcome wrong_batch = RunJob(bigger, comm.get());
  EXPECT_EQ(wrong_batch.status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(wrong_batch.status.message(), "batch_size 16"))
      << wrong_batch.status;
  EXPECT_TRUE(absl::StrContains(wrong_batch.status.message(), "32")) << wrong_batch.status;

  // Another model: refused by the restore, naming the architecture.
  JobSpec other_model = ResNetJob(dir.path());
  other_model.resume = "latest";
  const RunOutcome wrong_model = RunJob(other_model, comm.get());
  EXPECT_FALSE(wrong_model.status.ok());
  EXPECT_TRUE(absl::StrContains(wrong_model.status.message(), "resmlp")) << wrong_model.status;

  // Resuming a finished run: nothing to train, the evaluation is still reported.
  JobSpec done = MlpJob(dir.path());
  done.resume = "latest";
  ASSERT_TRUE(RunJob(done, comm.get()).status.ok());
  const RunOutcome again = RunJob(done, comm.get());
  ASSERT_TRUE(again.status.ok()) << again.status;
  EXPECT_EQ(again.result.steps, 36);
  EXPECT_TRUE(again.reports.empty());
  EXPECT_GT(again.result.final_eval.samples, 0);
}

TEST(JobFile, CheckpointAndResumeKeys) {
  StatusOr<JobSpec> j = ParseJobSpec(R"(
data: {synthetic: {train_samples: 64}}
output_dir: /tmp/run
checkpoint: {every_steps: 100, every_seconds: 1800, keep_last: 3}
resume: latest
)");
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_EQ(j->checkpoint.every_steps, 100);
  EXPECT_EQ(j->checkpoint.every_seconds, 1800);
  EXPECT_EQ(j->checkpoint.keep_last, 3);
  EXPECT_EQ(j->resume, "latest");
  EXPECT_EQ(EffectiveCheckpointDir(*j), "/tmp/run/checkpoints");
  StatusOr<JobSpec> back = ParseJobSpec(JobSpecToYaml(*j));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->checkpoint.keep_last, 3);
  EXPECT_EQ(back->resume, "latest");

  auto error = [](const std::string& text) {
    StatusOr<JobSpec> r = ParseJobSpec(absl::StrCat("data: {synthetic: {train_samples: 64}}\n", text));
    return r.ok() ? std::string("ok") : std::string(r.status().message());
  };
  EXPECT_EQ(error("checkpoint: {dir: /x, every_steps: -1}"),
            "checkpoint.every_steps: -1 is not allowed; expected 0..1099511627776");
  EXPECT_TRUE(absl::StartsWith(error("checkpoint: {dir: /x, every_seconds: -5}"),
                               "checkpoint.every_seconds: -5 is not allowed"));
  EXPECT_TRUE(absl::StartsWith(error("checkpoint: {dir: /x, keep: 1}"),
                               "checkpoint.keep: unknown key; expected one of dir, every_steps"));
  EXPECT_TRUE(absl::StartsWith(error("resume: latest"), "resume: 'latest' needs a checkpoint"));
  EXPECT_TRUE(absl::StartsWith(error("checkpoint: {every_steps: 5}"),
                               "checkpoint: triggers or keep_last given but no directory"));
  EXPECT_EQ(error("checkpoint: {dir: /x}\nresume: /x/ckpt-e0001-s000000010.h5"), "ok");
}

}  // namespace
}  // namespace resdist
