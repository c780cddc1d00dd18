// The wire JobSpec and common/job_spec.h agree: struct -> proto -> struct is the identity, and
// unset proto fields take the job file's defaults.
#include "proto/job_spec_convert.h"

#include <gtest/gtest.h>

namespace resdist {
namespace {

TEST(JobSpecConvertTest, RoundTripKeepsEveryField) {
  JobSpec j;
  j.name = "x";
  j.model.arch = "resnet18";
  j.model.num_classes = 7;
  j.model.shortcut = "B";
  j.model.small_input_stem = true;
  j.model.zero_init_residual = true;
  j.model.dropout = 0.3;
  j.model.sync_batchnorm = true;
  j.model.stage_blocks = {1, 1, 1, 1};
  j.model.base_width = 8;
  j.data.train = "/d/t.h5";
  j.data.eval = "/d/e.h5";
  j.data.augment.crop_padding = 4;
  j.data.augment.flip = true;
  j.data.in_memory = "on";
  j.batch_size = 64;
  j.epochs = 5;
  j.max_steps_per_epoch = 3;
  j.optimizer.lr = 0.05;
  j.optimizer.nesterov = true;
  j.optimizer.schedule = "step";
  j.optimizer.milestones = {1, 2};
  j.optimizer.gamma = 0.5;
  j.optimizer.label_smoothing = 0.1;
  j.seed = 99;
  j.threads_per_worker = 2;
  j.comm.bucket_mb = 4;
  j.eval_every_epochs = 2;
  j.output_dir = "/d/out";
  j.progress = "lines";
  j.workers = 4;
  j.max_restarts = 2;
  j.checkpoint.dir = "/d/ckpt";
  j.checkpoint.every_steps = 25;
  j.checkpoint.every_seconds = 90.5;
  j.checkpoint.keep_last = 3;
  j.resume = "latest";
  const JobSpec back = JobSpecFromProto(JobSpecToProto(j));
  EXPECT_EQ(JobSpecToYaml(back), JobSpecToYaml(j));
  EXPECT_EQ(back.checkpoint.dir, "/d/ckpt");
  EXPECT_EQ(back.checkpoint.every_steps, 25);
  EXPECT_EQ(back.checkpoint.every_seconds, 90.5);
  EXPECT_EQ(back.checkpoint.keep_last, 3);
  EXPECT_EQ(back.resume, "latest");
}

TEST(JobSpecConvertTest, CheckpointSectionFromProto) {
  v1::JobSpec p;
  p.set_output_dir("out");
  p.mutable_checkpoint()->set_every_steps(10);
  p.mutable_checkpoint()->set_keep_last(2);
  p.set_resume("out/checkpoints/ckpt-e0001-s000000010.h5");
  const JobSpec j = JobSpecFromProto(p);
  EXPECT_EQ(j.checkpoint.dir, "");  // the default: <output_dir>/checkpoints
  EXPECT_EQ(EffectiveCheckpointDir(j), "out/checkpoints");
  EXPECT_EQ(j.checkpoint.every_steps, 10);
  EXPECT_EQ(j.checkpoint.every_seconds, 0);
  EXPECT_EQ(j.checkpoint.keep_last, 2);
  EXPECT_EQ(j.resume, "out/checkpoints/ckpt-e0001-s000000010.h5");
}

TEST(JobSpecConvertTest, UnsetFieldsTakeDefaults) {
  v1::JobSpec p;
  p.mutable_data()->set_train("t.h5");
  p.set_workers(2);
  const JobSpec j = JobSpecFromProto(p);
  const JobSpec d;
  EXPECT_EQ(j.name, d.name);
  EXPECT_EQ(j.model.arch, d.model.arch);
  EXPECT_EQ(j.batch_size, d.batch_size);
  EXPECT_EQ(j.optimizer.lr, d.optimizer.lr);
  EXPECT_EQ(j.optimizer.schedule, d.optimizer.schedule);
  EXPECT_EQ(j.workers, 2);
  EXPECT_EQ(j.data.train, "t.h5");
  EXPECT_EQ(j.checkpoint.dir, d.checkpoint.dir);
  EXPECT_EQ(j.checkpoint.every_steps, d.checkpoint.every_steps);
  EXPECT_EQ(j.checkpoint.keep_last, d.checkpoint.keep_last);
  EXPECT_EQ(j.resume, d.resume);
}

}  // namespace
}  // namespace resdist
