// JobSpec parsing and validation (common/job_spec.h): the issue's example, JSON input, round trip
// through YAML, and an error naming the key path for unknown keys, wrong types and bad ranges.
#include "common/job_spec.h"

#include <gtest/gtest.h>

#include <string>

namespace resdist {
namespace {

constexpr char kIssueExample[] = R"(
name: fmnist-resnet20
model: {arch: resnet20, num_classes: 10, shortcut: A}
data: {train: data/fmnist-train.h5, eval: data/fmnist-test.h5, augment: {crop_padding: 2, flip: false}}
batch_size: 128          # global, split evenly across ranks
epochs: 3
optimizer: {lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4, schedule: cosine, warmup_epochs: 1}
seed: 1
threads_per_worker: 1
comm: {bucket_mb: 25}
eval_every_epochs: 1
output_dir: runs/fmnist-resnet20
)";

std::string ErrorOf(const std::string& text) {
  auto r = ParseJobSpec(text);
  return r.ok() ? std::string("OK") : std::string(r.status().message());
}

TEST(JobSpec, ParsesTheIssueExample) {
  auto r = ParseJobSpec(kIssueExample);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->name, "fmnist-resnet20");
  EXPECT_EQ(r->model.arch, "resnet20");
  EXPECT_EQ(r->model.num_classes, 10);
  EXPECT_EQ(r->model.shortcut, "A");
  EXPECT_FALSE(r->model.sync_batchnorm);
  EXPECT_EQ(r->data.train, "data/fmnist-train.h5");
  EXPECT_EQ(r->data.eval, "data/fmnist-test.h5");
  EXPECT_EQ(r->data.augment.crop_padding, 2);
  EXPECT_FALSE(r->data.augment.flip);
  EXPECT_EQ(r->batch_size, 128);
  EXPECT_EQ(r->epochs, 3);
  EXPECT_DOUBLE_EQ(r->optimizer.lr, 0.1);
  EXPECT_TRUE(r->optimizer.nesterov);
  EXPECT_DOUBLE_EQ(r->optimizer.weight_decay, 5e-4);
  EXPECT_EQ(r->optimizer.schedule, "cosine");
  EXPECT_DOUBLE_EQ(r->optimizer.warmup_epochs, 1);
  EXPECT_EQ(r->seed, 1u);
  EXPECT_DOUBLE_EQ(r->comm.bucket_mb, 25);
  EXPECT_EQ(r->output_dir, "runs/fmnist-resnet20");
}

TEST(JobSpec, AcceptsJson) {
  auto r = ParseJobSpec(R"({"name": "j", "data": {"train": "t.h5"}, "batch_size": 64,
                            "optimizer": {"lr": 0.05, "milestones": [1, 2], "schedule": "step"},
                            "epochs": 3, "model": {"sync_batchnorm": true}})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->batch_size, 64);
  EXPECT_TRUE(r->model.sync_batchnorm);
  ASSERT_EQ(r->optimizer.milestones.size(), 2u);
  EXPECT_DOUBLE_EQ(r->optimizer.milestones[1], 2);
}

TEST(JobSpec, RoundTripsThroughYaml) {
  auto a = ParseJobSpec(kIssueExample);
  ASSERT_TRUE(a.ok());
  a->model.stage_blocks = {1, 2, 1};
  a->optimizer.milestones = {1.5, 2.5};
  a->optimizer.lr = 0.1 / 3;
  const std::string text = JobSpecToYaml(*a);
  auto b = ParseJobSpec(text);
  ASSERT_TRUE(b.ok()) << b.status() << "\n" << text;
  EXPECT_EQ(JobSpecToYaml(*b), text);
  EXPECT_EQ(b->optimizer.lr, a->optimizer.lr);
  EXPECT_EQ(b->model.stage_blocks, a->model.stage_blocks);
}

TEST(JobSpec, ErrorsNameTheKeyPath) {
  const std::string base = "data: {train: t.h5}\n";
  EXPECT_EQ(ErrorOf(base + "optimizer: {lr: -0.1}"),
            "optimizer.lr: -0.1 is not allowed; expected a finite value > 0");
  EXPECT_NE(ErrorOf(base + "model: {archh: resnet20}").find("model.archh: unknown key; expected one of arch,"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "epochs: three").find("epochs: 'three' is not an integer (line 2)"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "epochs: 1.5").find("epochs: '1.5' is not an integer"), std::string::npos);
  EXPECT_NE(ErrorOf(base + "model: {arch: resnet21}").find("model.arch: 'resnet21' is not allowed"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "data: {train: x}").find("data: key given twice"), std::string::npos);
  EXPECT_NE(ErrorOf(base + "model: {sync_batchnorm: maybe}").find("model.sync_batchnorm: 'maybe' is not a boolean"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "batch_size: 10\nworkers: 3").find("batch_size: 10 is not allowed; expected a multiple of workers = 3"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "comm: {bucket_mb: 0}").find("comm.bucket_mb: 0 is not allowed"),
            std::string::npos);
  EXPECT_NE(ErrorOf(base + "optimizer: {milestones: [2, 1]}\nepochs: 3").find("optimizer.milestones[1]: 1"),
            std::string::npos);
  EXPECT_NE(ErrorOf("data: {train: t.h5, augment: {crop: 2}}").find("data.augment.crop: unknown key"),
            std::string::npos);
  EXPECT_NE(ErrorOf("epochs: 2").find("data.train: missing"), std::string::npos);
  EXPECT_NE(ErrorOf("- a\n- b").find("job file: a list is not a mapping"), std::string::npos);
  EXPECT_NE(ErrorOf("a: [").find("not valid YAML or JSON"), std::string::npos);
  EXPECT_NE(ErrorOf(base + "seed: -1").find("seed: '-1' is not a non-negative integer"), std::string::npos);
  EXPECT_NE(ErrorOf(base + "threads_per_worker: 0").find("threads_per_worker: 0 is not allowed; expected 1..1024"),
            std::string::npos);
}

TEST(JobSpec, FileErrorsNameThePath) {
  auto r = ParseJobFile("/nonexistent/job.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("/nonexistent/job.yaml"), std::string::npos);
}

}  // namespace
}  // namespace resdist
