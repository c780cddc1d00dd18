// Learning test: ResNet-20 on a small synthetic dataset (learnable class structure) drives the
// training loss down and held-out accuracy far above chance, in a CI-friendly time (~20 s on
// 2 cores).
#include <gtest/gtest.h>

#include "worker/train/trainer.h"

namespace resdist {
namespace {

TEST(Learning, ResNet20LearnsSyntheticData) {
  auto backend = MakeCpuBackend(2);
  SyntheticSourceOptions so;
  so.data.num_samples = 1536;
  so.data.height = so.data.width = 16;
  so.data.channels = 3;
  so.data.num_classes = 10;
  so.data.seed = 3;
  so.batch_size = 64;
  auto train = MakeSyntheticSource(so).value();
  so.first_sample = so.data.num_samples;  // held out: later samples of the same distribution
  so.data.num_samples = 512;
  so.shuffle = false;
  so.drop_last_batch = false;
  auto eval = MakeSyntheticSource(so).value();

  ModelSpec spec;
  spec.arch = "resnet20";
  spec.height = spec.width = 16;
  auto model = Model::Build(spec, backend.get(), 1).value();
  TrainConfig c;
  c.batch_size = 64;
  c.epochs = 3;
  c.sgd.lr = 0.1;
  c.sgd.momentum = 0.9;
  c.sgd.weight_decay = 5e-4;
  c.lr.base_lr = 0.1;
  c.lr.schedule = LrSchedule::kCosine;
  c.progress = ProgressMode::kOff;
  Trainer trainer(c, backend.get(), model.get(), train.get(), eval.get(), Logger("test"));
  auto before = trainer.evaluate(*eval);
  ASSERT_TRUE(before.ok()) << before.status();
  auto result = trainer.run();
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->epochs.size(), 3u);
  EXPECT_EQ(result->steps, 3 * (1536 / 64));
  EXPECT_LT(result->epochs.back().train_loss, 0.5 * result->epochs.front().train_loss);
  EXPECT_LT(result->final_eval.loss, 0.5 * before->loss);
  EXPECT_GT(result->final_eval.accuracy, 0.6);  // chance is 0.1
  EXPECT_EQ(result->final_eval.samples, 512);
}

TEST(Learning, MismatchedDataIsAClearError) {
  auto backend = MakeCpuBackend(1);
  SyntheticSourceOptions so;
  so.data.num_samples = 64;
  so.data.height = so.data.width = 8;
  so.data.channels = 1;
  so.batch_size = 32;
  auto train = MakeSyntheticSource(so).value();
  ModelSpec spec;  // expects 3x32x32
  auto model = Model::Build(spec, backend.get(), 1).value();
  TrainConfig c;
  c.batch_size = 32;
  Trainer trainer(c, backend.get(), model.get(), train.get(), nullptr, Logger("test"));
  auto r = trainer.run();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("does not match the model input 3x32x32"),
            std::string::npos)
      << r.status();
}

TEST(Learning, InvalidTrainConfigNamesTheField) {
  TrainConfig c;
  c.batch_size = 0;
  EXPECT_NE(ValidateTrainConfig(c).message().find("batch_size: 0 is not allowed"), std::string::npos);
  c = TrainConfig();
  c.epochs = 0;
  EXPECT_NE(ValidateTrainConfig(c).message().find("epochs: 0"), std::string::npos);
  c = TrainConfig();
  c.label_smoothing = 1.f;
  EXPECT_NE(ValidateTrainConfig(c).message().find("label_smoothing: 1 is outside [0, 1)"), std::string::npos);
  c = TrainConfig();
  c.sgd.lr = -0.1;
  EXPECT_NE(ValidateTrainConfig(c).message().find("optimizer.lr: -0.1"), std::string::npos);
}

}  // namespace
}  // namespace resdist
